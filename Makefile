# Two commands for a fresh clone (see README.md):
#   make run   - install, then create a vault, back up a sample tree, list it, restore, compare
#   make test  - install everything, then run linters and the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
CAIRN := $(VENV)/bin/cairn
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
	rm -rf $(DEMO) && mkdir -p $(DEMO)/sample
	cp -r README.md docs shared client_gui $(DEMO)/sample/
	rm -rf $(DEMO)/sample/client_gui/__pycache__
	mkdir -p $(DEMO)/sample/.cache && printf 'Signature: 8a477f597d28d172789f06886806bc55\n' > $(DEMO)/sample/.cache/CACHEDIR.TAG
	ln -s README.md $(DEMO)/sample/link-to-readme
	@echo "== cairn init"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache init
	@echo "== cairn backup"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache backup $(DEMO)/sample
	@echo "== cairn backup (again: nothing changed)"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache backup $(DEMO)/sample
	@echo "== cairn snapshots"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache snapshots
	@echo "== cairn restore latest"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache restore latest --target $(DEMO)/restored
	@echo "== cairn check --read-data"
	CAIRN_PASSPHRASE=demo-passphrase $(CAIRN) --vault $(DEMO)/vault --cache-dir $(DEMO)/cache check --read-data
	@echo "== compare"
	diff -r --no-dereference $(DEMO)/sample $(DEMO)/restored$(DEMO)/sample
	@echo "OK: the restored tree is identical to the original (demo/ holds the vault and the copy)"

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
