# The two commands of the README. Both do all set-up on a fresh machine.
#   make run   - virtualenv, install, fetch Kafka, start the embedded stack
#   make test  - virtualenv, install, PostgreSQL, fetch Kafka, the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test install schemas down

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "certrail needs Python 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/certrail up

down: install
	$(BIN)/certrail down

test: install
	bash scripts/test.sh

schemas: install
	$(BIN)/certrail schemas export
