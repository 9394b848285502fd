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

test: $(STAMP)
	$(PYTHON) -m pytest tests
