# The two commands of the README: `make demo` (set-up + the main job) and `make test` (set-up + tests).
# Both bootstrap .venv on first use. Data: $BACKDOOR_ARENA_DATA if set; else ../shared/data when it
# exists (this workplace's offline copies); else the loaders download into ~/.cache/backdoor-arena.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(BACKDOOR_ARENA_DATA),)
  ifneq ($(wildcard $(SHARED_DATA)/mnist),)
    export BACKDOOR_ARENA_DATA := $(SHARED_DATA)
  endif
endif

.PHONY: demo test test-slow lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 resolves to the cached CPU wheel here and to the normal wheel elsewhere
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/backdoor-arena demo --out demo-report --overwrite

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-report .pytest_cache
