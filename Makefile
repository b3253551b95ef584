# Two commands from a fresh clone: `make train` (fine-tune the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?= web,serve,export,sweep,slurm,bench,dev

.PHONY: install train test test-fast llama-cpp bench gpu-wheels clean

install: $(VENV)/.installed

# torch first, so pip never resolves the bare `torch` requirement to a multi-GB CUDA wheel on a
# machine without a GPU: with no NVIDIA GPU take the CPU build (a local/mirrored wheel if one is
# configured, else PyTorch's CPU index).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of torch"; \
		$(PIP) install -q "torch==$(TORCH_VERSION)"; \
	elif $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null; then \
		echo "no GPU: installed the CPU build of torch"; \
	else \
		echo "no GPU: installing the CPU build of torch from $(TORCH_CPU_INDEX)"; \
		$(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

train: install
	$(VENV)/bin/llama2ft-train $(ARGS)

# llama.cpp for the GGUF tests: a prebuilt llama-cpp-python wheel beside the checkout (its sdist takes
# ~25 minutes to build on 2 cores), installed once when present.
LLAMA_CPP_WHEEL := $(wildcard ../shared/wheels/llama_cpp_python-*.whl)

# --durations: the 25 slowest tests in every run's output, so a test that gets slow is seen where it happens
PYTEST := $(PY) -m pytest -q --durations=25

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
