# `make run` and `make test` bootstrap .venv on a fresh machine. `make run` installs what
# serving needs and nothing else; `make test` adds the test tools (pytest, mypy, the SDKs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
DIST_STAMP := $(VENV)/.installed-dist
PIP := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: run test soak bench bench-litellm-venv typecheck clean dist lint

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[fast]'
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml $(RUN_STAMP)
	$(PIP) -e '.[test,fast]'
	touch $(TEST_STAMP)

$(DIST_STAMP): pyproject.toml $(RUN_STAMP)
	$(PIP) -e '.[dist,fast]'
	touch $(DIST_STAMP)

run: $(RUN_STAMP)
	$(BIN)/weir serve --config proxy.yaml

test: $(TEST_STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

# The 5-minute soak (tests/reliability/test_soak.py), which `make test` skips; CI runs both.
soak: $(TEST_STAMP)
	WEIR_SOAK_MINUTES=$${WEIR_SOAK_MINUTES:-5} $(BIN)/python -m pytest -q -s -p no:cacheprovider -m soak tests/reliability/test_soak.py $(PYTEST_ARGS)

# `make lint` fixes what ruff can (imports, upgrades) and formats the tree.
lint: $(TEST_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.report

# bench/.litellm-venv: LiteLLM's proxy for the `litellm` benchmark target (bench/README.md),
# in its own virtualenv; never a dependency of Weir. Re-running it is a no-op once installed.
bench-litellm-venv:
	test -x bench/.litellm-venv/bin/litellm || { $(PY) -m venv bench/.litellm-venv && \
		bench/.litellm-venv/bin/pip install -q --disable-pip-version-check \
		'litellm[proxy]==1.106.2' uvloop httptools; }

# dist/weir: Weir and its dependencies in one zipapp (shiv) for this platform and this Python
# version, run with no virtualenv and no network (docs/operations.md, "Single-file build").
# build/ is removed first: setuptools would otherwise pack files left there by an older build.
dist: $(DIST_STAMP)
	rm -rf build dist/weir.part
	$(BIN)/shiv --compressed --reproducible --python '/usr/bin/env python3' \
		--entry-point proxy.cli:main --preamble dist/preamble.py --output-file dist/weir.part '.[fast]'
	rm -rf build
	mv dist/weir.part dist/weir
	@echo "dist/weir: copy it to the server and run ./weir serve --config proxy.yaml"

clean:
	rm -rf $(VENV) weir.db weir.db-wal weir.db-shm weir-admin-token
