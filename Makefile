# arrowport: build the loadable DuckDB extension, run it, test it.
#   make        build build/release/arrowport.duckdb_extension
#   make run    DuckDB CLI (pinned from PyPI) on ./arrowport.duckdb with arrowport loaded and listening
#   make test   build, then every test: cargo fmt --check, clippy -D warnings, Rust unit tests, SQL logic tests on
#               three hosts, end-to-end pytest
#   make bench  arrowport against in-process DuckDB, upserts against in-process MERGE, following, the status page,
#               then many hosts into one DuckLake (bench/results/*.json)
#   make fuzz   the structure-aware fuzzer against a live host (FUZZ_SECONDS, default 600; FUZZ_SEED), then fuzz-sql
#   make fuzz-sql  generated SQL over Flight SQL against a read-only listener (FUZZ_SQL_STATEMENTS, default 100000)
#   make soak   exactly-once under kill -9 with retrying clients, then a run without kills (SOAK_SECONDS, default 300)
#   make wheel  the Python wheel arrowport-duckdb (build/wheel): the extension, load(), `arrowport serve`

EXT_NAME    := arrowport
EXT_VERSION := $(or $(EXTENSION_VERSION),v$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1))
C_API       := v1.2.0
PLATFORM    := $(or $(DUCKDB_PLATFORM),linux_amd64)
BUILD_DIR   := build/release
EXTENSION   := $(BUILD_DIR)/$(EXT_NAME).duckdb_extension
EXT_DIR     := build/extensions
PYTHON      ?= python3
VENV        := .venv
VENV15      := .venv15
VENV_OLD    := .venv-old
VENV_LAKE   := .venv-lake
LISTEN      ?= 127.0.0.1:8815
DB          ?= arrowport.duckdb

.PHONY: all release test-hooks run test unit sqltest pytest bench bench-lake fuzz fuzz-sql soak clean venvs wheel configure test_release

all: release

# The library is rebuilt only when a source is newer than the file it makes, so `make test` right after
# `make test` calls no cargo build (the tests' own build below shares cargo's output file with this one).
SOURCES     := $(shell find src -type f) Cargo.toml Cargo.lock scripts/append_metadata.py

release: $(EXTENSION)

$(EXTENSION): $(SOURCES)
	cargo build --release
	mkdir -p $(BUILD_DIR)/extension/$(EXT_NAME)
	$(PYTHON) scripts/append_metadata.py --library target/release/lib$(EXT_NAME).so --out $(EXTENSION) \
		--platform $(PLATFORM) --duckdb-version $(C_API) --extension-version $(EXT_VERSION)
	cp $(EXTENSION) $(BUILD_DIR)/extension/$(EXT_NAME)/$(EXT_NAME).duckdb_extension

# The tests' own build, with the hooks the end-to-end tests drive (cargo feature test-hooks), apart from the
# library `make` builds; made after it, from the same sources.
HOOKS       := build/test-hooks/$(EXT_NAME).duckdb_extension

test-hooks: $(HOOKS)

$(HOOKS): $(EXTENSION)
	cargo build --release --features test-hooks
	mkdir -p build/test-hooks
	$(PYTHON) scripts/append_metadata.py --library target/release/lib$(EXT_NAME).so --out $@ \
		--platform $(PLATFORM) --duckdb-version $(C_API) --extension-version $(EXT_VERSION)

# The targets DuckDB's extension tooling runs on a C-API extension (extension-ci-tools' c_api_extensions
# makefiles: `make configure release test_release`): configure writes configure/platform.txt and
# configure/extension_version.txt (DUCKDB_PLATFORM and EXTENSION_VERSION override them) and makes the test
# virtualenvs; release leaves the file where that tooling collects it too (build/release/extension/<name>/);
# test_release runs the SQL logic tests against it, in every host.
configure: venvs
	mkdir -p configure
	echo "$(PLATFORM)" > configure/platform.txt
	echo "$(EXT_VERSION)" > configure/extension_version.txt

test_release: release venvs
	$(VENV)/bin/python test/run_sql.py

# Virtualenvs, made once per requirements file (the stamp is newer than the file it was made from).
$(VENV)/.stamp: test/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r test/requirements.txt
	touch $@

$(VENV15)/.stamp: test/requirements-duckdb15.txt
	$(PYTHON) -m venv $(VENV15)
	$(VENV15)/bin/pip install --quiet --disable-pip-version-check -r test/requirements-duckdb15.txt
	touch $@

$(VENV_OLD)/.stamp: test/requirements-duckdb-old.txt
	$(PYTHON) -m venv $(VENV_OLD)
	$(VENV_OLD)/bin/pip install --quiet --disable-pip-version-check -r test/requirements-duckdb-old.txt
	touch $@

$(VENV_LAKE)/.stamp: test/requirements-lake.txt
	$(PYTHON) -m venv $(VENV_LAKE)
	$(VENV_LAKE)/bin/pip install --quiet --disable-pip-version-check -r test/requirements-lake.txt
	touch $@

venvs: $(VENV)/.stamp $(VENV15)/.stamp $(VENV_OLD)/.stamp $(VENV_LAKE)/.stamp

run: release $(VENV)/.stamp
	mkdir -p $(EXT_DIR)
	$(VENV)/bin/duckdb -unsigned \
		-cmd "SET extension_directory = '$(EXT_DIR)'" \
		-cmd "FORCE INSTALL '$(EXTENSION)'" \
		-cmd "LOAD arrowport" \
		-cmd "SELECT arrowport_listen('$(LISTEN)') AS listening" \
		$(DB)

# One build (release) serves the extension and the unit tests: `cargo test --release` reuses its dependencies.
test: release test-hooks venvs
	$(VENV)/bin/python test/run_all.py

unit:
	cargo test --release --lib

sqltest: release $(VENV)/.stamp $(VENV15)/.stamp
	$(VENV)/bin/python test/run_sql.py

pytest: release test-hooks venvs
	$(VENV)/bin/python -m pytest -q test/python

# The Python wheel arrowport-duckdb (the extension, load(), connect() and `arrowport serve`), into build/wheel.
wheel: release
	python3 scripts/wheel/build.py --extension $(BUILD_DIR)/arrowport.duckdb_extension --library target/release/libarrowport.so --out build/wheel

# A benchmark, not a test: never part of `make test`. BENCH_QUICK=1 for a short run.
bench: release $(VENV)/.stamp $(VENV_LAKE)/.stamp
	$(VENV)/bin/python bench/bench.py
	$(VENV)/bin/python bench/steady.py
	$(VENV)/bin/python bench/upserts.py
	$(VENV)/bin/python bench/follow.py
	$(VENV)/bin/python bench/page.py
	$(VENV)/bin/python bench/quack.py
	$(VENV)/bin/python bench/lake.py

# The lake half of the bench alone: many hosts into one DuckLake (PostgreSQL, moto).
bench-lake: release $(VENV)/.stamp $(VENV_LAKE)/.stamp
	$(VENV)/bin/python bench/lake.py

# A fuzz run, not a test: `make test` runs a 30-second slice of it (test/python/test_fuzz.py).
fuzz: release $(VENV)/.stamp
	$(VENV)/bin/python test/fuzz.py
	$(VENV)/bin/python test/fuzz_sql.py

# Generated SQL alone (`make test` runs a 600-statement slice: test/python/test_fuzz.py).
fuzz-sql: release $(VENV)/.stamp
	$(VENV)/bin/python test/fuzz_sql.py

# A soak, not a test: `make test` runs a 40-second slice with kills (test/python/test_soak.py).
soak: release $(VENV)/.stamp
	SOAK_KILLS=1 $(VENV)/bin/python test/soak.py
	SOAK_KILLS=0 $(VENV)/bin/python test/soak.py

clean:
	cargo clean
	rm -rf build
