"""arrowport for Python's duckdb: the arrowport DuckDB extension (an in-process landing port for Apache Arrow
data: Arrow Flight, Flight SQL and REST on one port), built for linux x86_64 and shipped in this package.

    import duckdb, arrowport_duckdb
    con = arrowport_duckdb.connect("landing.duckdb")      # a connection with arrowport loaded
    con.sql("SELECT arrowport_listen('127.0.0.1:8815')")

or, on a connection of your own made with config={"allow_unsigned_extensions": "true"}:
`arrowport_duckdb.load(con)`. The command `arrowport serve DB_FILE --listen HOST:PORT` runs a host until SIGTERM.
"""
import os

__version__ = "0.1.0"

EXTENSION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arrowport.duckdb_extension")

UNSIGNED_HINT = (
    "DuckDB loads only signed extensions unless the database was opened with allow_unsigned_extensions; it cannot "
    "be turned on for one LOAD once the database runs. Open it with "
    "duckdb.connect(path, config={'allow_unsigned_extensions': 'true'}), or use arrowport_duckdb.connect(path)."
)


def extension_path():
    """The bundled extension file (for `LOAD '<path>'` in any DuckDB host of this machine)."""
    return EXTENSION


def load(con):
    """Loads the bundled arrowport into a duckdb connection; returns the connection. The database must allow
    unsigned extensions (see `connect`); otherwise raises RuntimeError saying what to set."""
    try:
        con.execute(f"LOAD '{EXTENSION}'")
    except Exception as e:  # duckdb's own exception types differ between releases
        if "signature" in str(e).lower() or "unsigned" in str(e).lower():
            raise RuntimeError(f"arrowport could not be loaded: {e}\n{UNSIGNED_HINT}") from e
        raise
    return con


def connect(database=":memory:", read_only=False, config=None):
    """duckdb.connect with unsigned extensions allowed, arrowport loaded."""
    import duckdb

    settings = dict(config or {})
    settings["allow_unsigned_extensions"] = "true"
    return load(duckdb.connect(database, read_only=read_only, config=settings))
