# Two commands from a fresh clone: `make train` (fine-tune the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
UV_VERSION ?= 0.13.8
UV := $(VENV)/bin/uv
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# The extras `make install` installs and the locks pin; the locks are for this Python on x86_64 Linux.
EXTRAS ?= web,serve,export,sweep,slurm,bench,dev
LOCK_PYTHON ?= 3.11
LOCK_PLATFORM ?= x86_64-manylinux_2_28
LOCKS := lock/cpu.txt lock/cuda.txt
HAS_GPU = command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
# uv reads no pip configuration: pip's find-links (a folder of local or mirrored wheels, such as the CPU build
# of torch) are handed to it
PIP_FIND_LINKS = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$$/\1/p")
FIND_LINKS = $(foreach f,$(sort $(PIP_FIND_LINKS)),--find-links $(f))
UV_SYNC = $(UV) pip sync --python $(PY) $(FIND_LINKS)
# torch's CPU build from PyTorch's index, for a machine whose pip finds no local or mirrored copy
FROM_TORCH_INDEX := --extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match

.PHONY: install lock train test test-fast llama-cpp bench gpu-wheels clean

install: $(VENV)/.installed

# Exactly the versions of a lock (uv pip sync also removes what it does not list): lock/cuda.txt with an NVIDIA
# GPU, else lock/cpu.txt, whose torch is the CPU build, so that a laptop or CI never downloads a multi-GB CUDA
# wheel (a local or mirrored copy when pip finds one, else PyTorch's CPU index). Then llama2ft itself, editable.
$(VENV)/.installed: pyproject.toml $(LOCKS) | $(UV)
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(LOCK_PYTHON)".split("."))))' || { \
		echo "error: the locks in lock/ are for Python $(LOCK_PYTHON), $(VENV) has $$($(PY) -V): rm -rf $(VENV) and run" \
		     "make install PYTHON=python$(LOCK_PYTHON), or make lock LOCK_PYTHON=<yours>"; exit 2; }
	@set -e; if $(HAS_GPU); then \
		lock=lock/cuda.txt; echo "NVIDIA GPU found: installing $$lock (the CUDA build of torch)"; \
		$(UV_SYNC) $$lock; \
	else \
		lock=lock/cpu.txt; \
		if $(UV_SYNC) $$lock 2>/dev/null; then \
			echo "no GPU: installed $$lock (the CPU build of torch)"; \
		else \
			echo "no GPU: installing $$lock with the CPU build of torch from $(TORCH_CPU_INDEX)"; \
			$(UV_SYNC) $(FROM_TORCH_INDEX) $$lock; \
		fi; \
	fi; \
	$(UV) pip install --python $(PY) -q --no-deps -e .; \
	echo "$$lock $$(sha256sum < $$lock | cut -d' ' -f1)" > $@  # the lock tests/test_lock.py compares the venv with

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "uv==$(UV_VERSION)"

# Resolve the locks anew from pyproject.toml: versions already locked are kept where they still fit (LOCK_ARGS=
# --upgrade takes the newest of everything, --upgrade-package NAME of one). Both locks pin the same versions;
# they differ only in torch's build and what the CUDA build brings (nvidia-*, triton).
UV_COMPILE = $(UV) pip compile -q --custom-compile-command 'make lock' --annotation-style line pyproject.toml \
	$(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) --python-version $(LOCK_PYTHON) \
	--python-platform $(LOCK_PLATFORM) $(LOCK_ARGS)
comma := ,
lock: | $(UV)
	mkdir -p lock
	echo "torch==$(TORCH_VERSION)+cpu" > lock/torch-cpu.in
	$(UV_COMPILE) $(FIND_LINKS) lock/torch-cpu.in -o lock/cpu.txt 2>/dev/null \
		|| $(UV_COMPILE) $(FROM_TORCH_INDEX) lock/torch-cpu.in -o lock/cpu.txt
	echo "torch==$(TORCH_VERSION)" > lock/torch-cuda.in
	sed -n '/^[A-Za-z0-9]/{/^torch==/!s/ .*//p}' lock/cpu.txt > lock/cpu-pins.txt  # all but torch
	$(UV_COMPILE) lock/torch-cuda.in -c lock/cpu-pins.txt -o lock/cuda.txt
	rm -f lock/torch-cpu.in lock/torch-cuda.in lock/cpu-pins.txt

train: install
	$(VENV)/bin/llama2ft-train $(ARGS)

# llama.cpp for the GGUF tests: a prebuilt llama-cpp-python wheel beside the checkout (its sdist takes
# ~25 minutes to build on 2 cores), installed once when present.
LLAMA_CPP_WHEEL := $(wildcard ../shared/wheels/llama_cpp_python-*.whl)

# --durations: the 25 slowest tests in every run's output, so a test that gets slow is seen where it happens.
# Two pytest-xdist workers (one per core; each gives torch one thread): most tests wait on imports, servers or a
# browser on one core, so the suite takes 13 min instead of 18.5 on 2 cores. --dist loadfile keeps a file's
# tests on one worker, so its module fixtures are made once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

test: install llama-cpp
	$(PYTEST) $(ARGS)

test-fast: install llama-cpp
	$(PYTEST) -m "not slow" $(ARGS)

llama-cpp: install
	@if [ -n "$(LLAMA_CPP_WHEEL)" ] && ! $(PY) -c "import llama_cpp" 2>/dev/null; then \
		$(PIP) install -q --no-deps $(LLAMA_CPP_WHEEL) && $(PIP) install -q numpy typing-extensions jinja2 diskcache; \
	fi

bench: install
	$(PY) bench/train_throughput.py

# The wheels and data bench/gpu_run.sh carries to a GPU machine (.whl/, .devdata/; see bench/README.md).
gpu-wheels: install
	PY=$(PY) bash scripts/gpu_wheels.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache
