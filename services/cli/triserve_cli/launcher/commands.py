"""``triserve up | down | run | status``: the launcher's subcommands."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from triserve_cli.launcher.config import PlatformConfig, PlatformError
from triserve_cli.launcher.supervisor import Platform


def try_it(config: PlatformConfig) -> str:
    """The lines ``up`` prints: where things are and a curl line to try."""
    gateway = config.url(config.gateway_port)
    key = "(token auth disabled)" if config.disable_token_auth else f"(key: {config.management_key_file})"
    return "\n".join(
        [
            f"triserve is up: gateway {gateway}  (logs: {config.log_dir}/, stop: make down)",
            f"  management API {config.url(config.management_port)} {key}, "
            f"metrics {config.url(config.metrics_port)}/metrics",
            *(
                [f"  gRPC inference (KServe v2) {config.url(config.gateway_grpc_port).removeprefix('http://')}"]
                if config.gateway_grpc_port > 0
                else []
            ),
            "Try it:",
            "  .venv/bin/triserve sample 0 > 0.png",
            f"  curl -s -T 0.png {gateway}/predictions/mnist   # prints 0",
        ]
    )


def _config(args: argparse.Namespace) -> PlatformConfig:
    return PlatformConfig.from_env(
        run_dir=args.run_dir,
        model_store=args.model_store,
        host=args.host,
        gateway_port=args.gateway_port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
        gateway_grpc_port=args.gateway_grpc_port,
        models=args.models,
        gateway_workers=getattr(args, "gateway_workers", None),
        disable_token_auth=True if args.disable_token_auth else None,
        onnx_port=args.onnx_port,
        paddle_port=args.paddle_port,
        ts_inference_port=args.ts_inference_port,
        ts_management_port=args.ts_management_port,
        ts_metrics_port=args.ts_metrics_port,
        ts_grpc_inference_port=args.ts_grpc_inference_port,
        ts_grpc_management_port=args.ts_grpc_management_port,
        ready_timeout_s=getattr(args, "timeout", None),
    )


def _cmd_up(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    status = platform.status()
    if status and all(s.endswith(", ready") for s in status.values()):
        print(f"already up ({platform.config.run_dir})")
        print(try_it(platform.config))
        return 0
    started = time.monotonic()
    try:
        platform.start()
    except PlatformError as exc:
        print(f"triserve up failed: {exc}\n(everything started was stopped)", file=sys.stderr)
        return 1
    print(f"started in {time.monotonic() - started:.1f}s")
    print(try_it(platform.config))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        lines = Platform(_config(args)).stop()
    except PlatformError as exc:
        print(f"triserve down: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    status = platform.status()
    for name, line in status.items():
        print(f"{name:<11} {line}")
    strays = platform.running().get("(outside its group)", [])
    for proc in strays:
        print(f"stray       pid {proc.pid}: {proc.cmdline[:100]}")
    return 0 if all(s.endswith(", ready") for s in status.values()) else 3


def _cmd_run(args: argparse.Namespace) -> int:
    platform = Platform(_config(args))
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        platform.start()
        print(try_it(platform.config).replace("make down", "Ctrl-C"), flush=True)
        while not (dead := platform.exited()):
            time.sleep(0.5)
        print(platform.report(dead, "exited"), file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
    except PlatformError as exc:
        print(f"triserve run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("\n".join(platform.stop()), file=sys.stderr)
    return code


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, help="pid files, platform.json, logs/ (default run/)")
    parser.add_argument("--model-store", type=Path, help="model store for every backend")
    parser.add_argument("--host", help="address every service binds to (default 127.0.0.1)")
    parser.add_argument("--models", help="models loaded at start: all (default), none, or mnist,fashion:1")
    parser.add_argument(
        "--disable-token-auth",
        action="store_true",
        help="no management key check (as TorchServe's --disable-token-auth); local use only",
    )
    for flag, what in (
        ("--gateway-port", "gateway"),
        ("--management-port", "gateway management API"),
        ("--metrics-port", "gateway metrics"),
        ("--gateway-grpc-port", "gateway gRPC inference API (KServe v2; 0 = off)"),
        ("--onnx-port", "ONNX service"),
        ("--paddle-port", "Paddle service"),
        ("--ts-inference-port", "TorchServe inference API"),
        ("--ts-management-port", "TorchServe management API"),
        ("--ts-metrics-port", "TorchServe metrics API"),
        ("--ts-grpc-inference-port", "TorchServe gRPC inference API"),
        ("--ts-grpc-management-port", "TorchServe gRPC management API"),
    ):
        parser.add_argument(flag, type=int, help=f"port of the {what}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up``, ``down``, ``run`` and ``status``."""
    commands = (
        ("up", _cmd_up, "start the platform in the background and wait until it is ready"),
        ("run", _cmd_run, "start the platform in the foreground; Ctrl-C stops it"),
        ("down", _cmd_down, "stop what `up` started (by pid files)"),
        ("status", _cmd_status, "show which services run and are ready (exit 3 unless all are)"),
    )
    for name, func, text in commands:
        parser = subparsers.add_parser(name, help=text, description=text)
        _add_common(parser)
        if name in ("up", "run"):
            parser.add_argument("--timeout", type=float, help="seconds to wait for ready (default 300)")
            parser.add_argument(
                "--gateway-workers", type=int, metavar="N",
                help="gateway processes on the inference port (default: TRISERVE_GATEWAY_WORKERS, else 0 = "
                "auto: one per CPU the gateway may use, at most 4)",
            )
        parser.set_defaults(func=func)
