# The two commands the README starts with.  Both create or refresh .venv first.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.mmdoconv-env

.PHONY: demo test env

env: $(STAMP)

$(STAMP): tools/setup_env.sh requirements.txt pyproject.toml mmdoconv/ops/csrc/compose.cpp
	bash tools/setup_env.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) tools/misc/demo.py $(DEMO_ARGS)

# Two test processes (pytest-xdist), each with half the cores for torch
# (tests/conftest.py): much of a small training run is single-threaded Python
# (configs, Runner set-up, imports, data), which a second process overlaps.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PYTHON) -m pytest tests -n $(TEST_WORKERS) --dist worksteal
