"""``triserve bench``: every serving path measured side by side with wrk; table, JSON and PNG.

Modules: :mod:`.paths` (what is measured), :mod:`.stack` (starting the services on free ports),
:mod:`.payloads` (MNIST request bodies), :mod:`.check` (correctness pre-check), :mod:`.wrk` (the load
generator and its Lua response check), :mod:`.trivial` (the calibration endpoint), :mod:`.report`
(output) and :mod:`.runner` (one run).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

from triserve_cli.bench.paths import PATHS

SMOKE_CONCURRENCY = [1, 4]
SMOKE_DURATION_S = 1.0
SMOKE_WARMUP_S = 1.0
"""``--smoke``: the short version the test suite runs (levels, seconds per level, warm-up seconds)."""


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be integers >= 1")
    return levels


def _cmd_bench(args: argparse.Namespace) -> int:
    from triserve_cli.bench import report, runner
    from triserve_cli.bench.paths import select
    from triserve_cli.bench.payloads import DEFAULT_MODEL_STORE

    if args.smoke:
        args.concurrency = args.concurrency or SMOKE_CONCURRENCY
        args.duration = args.duration or SMOKE_DURATION_S
        args.warmup = SMOKE_WARMUP_S if args.warmup is None else args.warmup
    try:
        paths = select(args.paths.split(",") if args.paths else None)
    except KeyError as exc:
        print(f"triserve bench: {exc.args[0]}", file=sys.stderr)
        return 2
    from triserve_cli.bench.stack import TorchServeTuning

    try:
        tuning = TorchServeTuning.parse(args.torchserve_tuned or "")
    except ValueError as exc:
        print(f"triserve bench: --torchserve-tuned: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S")
    config = runner.BenchConfig(
        paths=paths,
        out_dir=out.resolve(),
        model_store=(args.model_store or DEFAULT_MODEL_STORE).resolve(),
        concurrency=args.concurrency or list(runner.DEFAULT_CONCURRENCY),
        duration_s=args.duration or 10.0,
        warmup_s=3.0 if args.warmup is None else args.warmup,
        threads=args.threads,
        timeout_s=args.timeout,
        mnist_dir=args.mnist_dir,
        max_foreign_cpu=args.max_foreign_cpu,
        retries=args.retries,
        torchserve_tuning=tuning,
        gateway_workers=args.gateway_workers,
        progress=not args.no_progress,
        command=shlex.join(["triserve", *sys.argv[1:]]),
    )
    try:
        document = runner.run(config)
    except (runner.BenchError, RuntimeError, OSError) as exc:
        print(f"triserve bench failed: {exc}", file=sys.stderr)
        return 1
    print(report.markdown(document))
    print(f"\nJSON: {out / 'bench.json'}\nplot: {out / 'bench.png'}\ntable: {out / 'bench.md'}")
    errors = sum(r["errors"] for r in document["results"])
    return 0 if errors == 0 else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand."""
    names = ", ".join(p.name for p in PATHS)
    parser = subparsers.add_parser(
        "bench",
        help="measure every serving path side by side (wrk): table, JSON and PNG",
        description=__doc__,
    )
    parser.add_argument(
        "--concurrency", type=_levels, help="comma-separated client counts (default 1,8,32,64)"
    )
    parser.add_argument("--duration", type=float, help="seconds measured per path and level (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load per path first (default 3)")
    parser.add_argument("--paths", help=f"comma-separated subset of: {names}")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout, s (default 10)")
    parser.add_argument("--out", type=Path, help="output folder (default bench-results/<timestamp>)")
    parser.add_argument("--model-store", type=Path, help="model store (default <repo>/model_store)")
    parser.add_argument("--mnist-dir", type=Path, help="MNIST t10k IDX files (default ../shared/data/mnist)")
    parser.add_argument(
        "--max-foreign-cpu",
        type=float,
        default=0.25,
        help="cores used by other processes above which a measurement is repeated (default 0.25)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-measurements of a disturbed run (default 2)"
    )
    parser.add_argument(
        "--torchserve-tuned",
        metavar="NAME=INT,...",
        help="the torchserve-tuned path's per-model config, e.g. workers=2,batch_size=8,max_batch_delay_ms=5 "
        "(default: the values the sweep in BENCHMARKS.md chose)",
    )
    parser.add_argument(
        "--gateway-workers", type=int, metavar="N",
        help="processes of each gateway instance (default: TRISERVE_GATEWAY_WORKERS, else the gateway's "
        "default 0 = auto: one per CPU it may use, at most 4; bench.json records the number)",
    )
    parser.add_argument("--smoke", action="store_true", help="short run: levels 1,4, 1 s each, 1 s warm-up")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_bench)
