# fastclr developer targets. `make bench` and `make test` set everything up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastclr-installed
NATIVE_SRC := pyproject.toml CMakeLists.txt $(wildcard kernels/cpu/*.cpp kernels/cpu/*.h)

.PHONY: setup setup-peers test test-peers lint format bench bench-quick bench-peers gpu-check aot-check test-triton36 quality clean

setup: $(STAMP)

$(STAMP): $(NATIVE_SRC) scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

# The tests, lint and type checks CI runs (.ci/run calls `make test`). Tests marked `peers` need
# lightly/torchvision, which .venv cannot hold; `make test-peers` runs them.
test: setup lint
	$(PY) -m pytest -q -m "not peers"

# .venv-peers: torch 2.14.1 + torchvision 0.29.1 + lightly + pytorch-metric-learning + fastclr.
PEERS_STAMP := .venv-peers/.fastclr-installed
setup-peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(NATIVE_SRC) scripts/setup_peers.sh
	bash scripts/setup_peers.sh
	touch $(PEERS_STAMP)

# fastclr.compat against lightly itself, and the augmentations against torchvision.
test-peers: setup-peers
	.venv-peers/bin/python -m pytest -q -m peers

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/throughput.py

bench-quick: setup
	$(PY) bench/throughput.py --quick

# fastclr's pretraining step against the lightly-example pipeline on one JPEG folder, per stage
# and against the measured matmul rate (bench/pipeline_bench.py; ~10 min on 2 quiet cores):
# bench/results/pipeline-cpu.{md,jsonl}. `make bench-peers BENCH_ARGS=--quick`: a smoke run.
BENCH_ARGS ?=
bench-peers: setup-peers
	.venv-peers/bin/python bench/pipeline_bench.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# On a CUDA machine: tests with compiled kernels + GPU benchmarks, every result under $OUT (when
# set) and bench/results/, each section as it finishes. Works from a bare copy (no install).
# `make gpu-check GPU_CHECK_ARGS=--dry-run` shows each step, its budget and its output file.
GPU_CHECK_ARGS ?=
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

# Every Triton kernel compiled for sm_90 without a GPU: bench/results/triton-sm90.{md,json}.
# `make aot-check AOT_TRITON=3.6` uses triton 3.6.* from .venv/triton-3.6 instead (the GPU image's
# version); AOT_ARGS=--full compiles the whole configuration product.
AOT_TRITON ?=
AOT_ARGS ?=
aot-check: setup
	bash scripts/aot_check.sh $(if $(AOT_TRITON),--triton $(AOT_TRITON)) $(AOT_ARGS)

# The Triton test files under triton 3.6's interpreter (.venv/triton-3.6; CI runs it).
test-triton36: setup
	bash scripts/triton_tests.sh 3.6

# Representation quality: digits as a PNG folder through the default recipe, and the digits demo;
# 3 seeds each, pretrained vs random-weight encoder vs raw pixels (bench/results/quality.md).
quality: setup
	$(PY) bench/quality.py
