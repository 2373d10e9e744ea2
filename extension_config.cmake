# This file is read by DuckDB's extension build system (community extensions). arrowport is a Rust extension
# built against DuckDB's stable C API; the loadable binary comes from `make` (cargo + scripts/append_metadata.py).
duckdb_extension_load(arrowport
    SOURCE_DIR ${CMAKE_CURRENT_LIST_DIR}
    LOAD_TESTS
)
