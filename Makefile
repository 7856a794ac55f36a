# triserve developer commands. A fresh clone (with ../shared beside it) needs only:
#   make up      # system packages + venv + install, then all four services in the background (gateway :8080)
#   make test    # system packages the tests need, then the whole test suite (unit, integration, compose)
# System packages come from scripts/system-deps.sh (apt-get when root; otherwise it prints the command).
# See README.md for the rest; `make help` lists every target.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.11 (the CPU torch wheel is built for it); override with `make PYTHON=/path/to/python3.11`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.triserve-installed
# Extra arguments: `make up ARGS="--gateway-port 9080"`, `make test PYTEST_ARGS="-k gateway -x"`.
ARGS ?=
PYTEST_ARGS ?=
# Images: `make images OFFLINE=1` (no registry: local Debian base image, torch's wheel from disk),
# `EXTRA_CA=/path/ca.pem` (a CA pip must trust in the builds, e.g. a TLS-intercepting proxy's).
OFFLINE ?= auto
EXTRA_CA ?=
# Commands run as in an activated venv (tools such as `torchserve` are looked up on PATH).
ACTIVATE := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: help venv install java deps data up down run status test bench lint proto readme clean images compose-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 20

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else f"triserve needs Python 3.11, {sys.executable} is {v.major}.{v.minor}: make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

venv: $(BIN)/python ## create the virtual environment (.venv)

# torch is checked first: pip must take the CPU build (a plain PyPI torch is a multi-GB CUDA build).
$(STAMP): requirements-dev.txt constraints.txt $(wildcard services/*/pyproject.toml) | $(BIN)/python
	@url=$$($(BIN)/pip install --dry-run --ignore-installed --no-deps -q --report - -c constraints.txt torch 2>/dev/null \
	  | $(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["download_info"]["url"])'); \
	case "$$url" in *cpu*) ;; *) echo "pip would install torch from $$url, not a CPU build."; \
	  echo "Point pip at the CPU wheels first, e.g.: export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"; exit 1;; esac
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt
	@$(BIN)/python -c 'import sys, torch; sys.exit(f"torch {torch.__version__} is a CUDA build" if torch.version.cuda else 0)'
	@touch $@

install: $(STAMP) ## install the project and dev tools into .venv (only when requirements changed)

java: ## system packages `make up` needs: Python 3.11, Java 17 (TorchServe), libgomp1 (Paddle), curl
	@scripts/system-deps.sh run

deps: ## system packages the tests need too: wrk, Docker engine, debootstrap, docker-compose, kubectl, ...
	@scripts/system-deps.sh test

FASHION_DIR := /usr/share/datasets/fashion-mnist
data: ## Fashion-MNIST from Debian's dataset-fashion-mnist (apt, when root); MNIST is looked up at run time
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$TRISERVE_FASHION_MNIST_DIR" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Fashion-MNIST not found: installing dataset-fashion-mnist with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not in $(FASHION_DIR): sudo apt-get install -y dataset-fashion-mnist"; \
	  echo "  (or set TRISERVE_FASHION_MNIST_DIR; the trainer and triserve sample can also download it)"; \
	fi

up: java install ## start the platform in the background; waits until the gateway is ready
	$(ACTIVATE) $(BIN)/triserve up $(ARGS)

run: java install ## start the platform in the foreground; Ctrl-C stops everything
	$(ACTIVATE) $(BIN)/triserve run $(ARGS)

down: ## stop what `make up` started (pid files under run/)
	@if [ -x $(BIN)/triserve ]; then $(BIN)/triserve down $(ARGS); else echo "no $(BIN)/triserve: nothing was started"; fi

status: install ## which services run and are ready
	$(BIN)/triserve status $(ARGS)

test: deps install ## the whole test suite (unit, integration with real services, compose end to end)
	$(ACTIVATE) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole benchmark (BENCHMARKS.md): every path at 1/8/32/64 clients, ~17 min; needs wrk and Java 17.
# `make bench ARGS="--out docs/benchmarks --retries 1"` writes where BENCHMARKS.md links.
bench: install java ## the full benchmark (`triserve bench`): table, JSON, plot and PASS/MISS per target
	@command -v wrk >/dev/null || { echo "wrk not found: sudo apt-get install -y wrk"; exit 1; }
	$(ACTIVATE) $(BIN)/triserve bench $(ARGS)

images: ## build the CPU images (OFFLINE=1: no registry needed; EXTRA_CA=FILE: CA for pip in builds)
	@scripts/system-deps.sh docker
	OFFLINE=$(OFFLINE) EXTRA_CA=$(EXTRA_CA) deploy/docker/build-images.sh

compose-test: deps install ## docker compose end to end (tests/compose): build, up, checks, down -v
	$(ACTIVATE) $(BIN)/python -m pytest tests/compose $(PYTEST_ARGS)

lint: install ## ruff + mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/mypy

proto: install ## regenerate the gateway's gRPC code (KServe v2) from its .proto with grpcio-tools
	cd services/gateway && ../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
	  --grpc_python_out=. triserve_gateway/proto/grpc_predict_v2.proto

readme: install ## regenerate README.md's configuration reference from the settings classes
	$(BIN)/python -m triserve_cli.config_reference --write-readme README.md

clean: down ## stop the platform and delete run/ (logs included)
	rm -rf run
