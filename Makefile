# Two commands for a fresh clone (see README.md):
#   make run   - install, start a local cairn-server, create a user, back up a sample tree
#                through it, restore it, compare (.ci/demo)
#   make test  - install everything, then run linters and the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
DEMO := $(CURDIR)/demo
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test test-all lint bench clean

$(VENV)/.installed: pyproject.toml .ci/system-packages
	bash .ci/system-packages
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	bash .ci/demo

# The CI job: lint, type-check, dependency rules, then every test not marked slow.
test: setup
	$(VENV)/bin/ruff check shared client_gui server tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 -q -p no:cacheprovider

# Everything, slow tests included (crash soak, >4 GiB files, big trees).
test-all: setup
	$(PY) -m pytest -n 2 -q -p no:cacheprovider -m ''

clean:
	rm -rf $(DEMO) $(VENV) .pytest_cache .mypy_cache .ruff_cache
