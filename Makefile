# Two commands for a fresh clone (see README.md):
#   make run   - install, start a local cairn-server, create a user, back up a sample tree
#                through it, restore it, compare (.ci/demo)
#   make test  - install everything, then run linters and the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
DEMO := $(CURDIR)/demo
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test test-all lint bench bench-quick clean

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

# Cairn against restic and Borg (not part of CI; see docs/PERFORMANCE.md): installs restic, the
# restic REST server and Borg into bench/.tools, generates ~2 GiB of seeded data in bench/work,
# runs 3 alternating rounds, writes docs/PERFORMANCE.md and bench/results/<time>.json.
# Options through BENCH_ARGS, e.g. make bench BENCH_ARGS='--size 1GiB --only cairn,restic'.
bench: setup
	$(PY) -m bench run $(BENCH_ARGS)

# A quick comparison before committing: ~200 MiB, one round, under two minutes (bench/quick).
bench-quick: setup
	$(PY) -m bench run --quick $(BENCH_ARGS)

clean:
	rm -rf $(DEMO) $(VENV) .pytest_cache .mypy_cache .ruff_cache
