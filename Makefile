# cnnvis_ext — set-up, build, test, demo.
#   make demo   create .venv, install torch + deps, build the extension, run the demo
#   make test   create .venv, install torch + deps, build the extension, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.14.1 (its CUDA build also runs on a CPU) with torchvision 0.29.1: the pair that
# imports together, so that the agreement tests against torchvision models, captum and
# zennit run (tests/vis/test_zoo.py). For the CUDA kernels: make CNNVIS_CUDA=ON build
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEPS   := numpy pillow tqdm pytest pybind11 ninja "scikit-build-core>=0.10" cmake
# test dependencies: the peers the agreement tests compare with
TEST_DEPS := captum zennit quantus grad-cam==1.5.7 hypothesis
STAMP  := $(VENV)/.deps-installed
PIP    := $(BIN)/pip --disable-pip-version-check
OUT    ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup build test test-fast demo bench cuda-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python Makefile
	$(PIP) install -q $(TORCH) $(DEPS) $(TEST_DEPS)
	touch $(STAMP)

setup: $(STAMP)

# Incremental: CMake/ninja keep their state in build/, so only changed files recompile.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

# The op kernels' tests once more with the generic and the AVX2 copies of the
# CPU kernels (CNNVIS_CPU_ISA caps the run-time dispatch), so that every copy
# is checked on one machine.
KERNEL_TESTS := tests/ops

test: build
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)
	CNNVIS_CPU_ISA=avx2 $(BIN)/python -m pytest $(KERNEL_TESTS) -q -m "not slow" $(PYTEST_ARGS)
	CNNVIS_CPU_ISA=generic $(BIN)/python -m pytest $(KERNEL_TESTS) -q -m "not slow" $(PYTEST_ARGS)

test-fast: build
	$(BIN)/python -m pytest tests -q -m "not slow" $(PYTEST_ARGS)

demo: build
	$(BIN)/cnnvis demo --out $(OUT)

bench: build
	$(BIN)/cnnvis bench

cuda-check:
	bash .ci/build_cuda.sh

clean:
	rm -rf build dist *.egg-info
