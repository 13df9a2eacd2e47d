# `make run` and `make test` bootstrap .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak bench typecheck clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,fast]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/weir serve --config proxy.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

# The 5-minute soak (tests/reliability/test_soak.py), which `make test` skips; CI runs both.
soak: $(STAMP)
	WEIR_SOAK_MINUTES=$${WEIR_SOAK_MINUTES:-5} $(BIN)/python -m pytest -q -s -p no:cacheprovider -m soak tests/reliability/test_soak.py $(PYTEST_ARGS)

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) weir.db weir.db-wal weir.db-shm
