# Two commands do everything on a fresh machine:
#   make benchmark   set up (once) and run the main job on the embedded synthderm data
#   make test        set up (once) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup benchmark test test-all clean-results

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

setup: $(STAMP)

benchmark: $(STAMP)
	$(PY) cli.py benchmark $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean-results:
	rm -rf results
