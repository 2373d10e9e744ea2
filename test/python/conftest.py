"""Fixtures: a DuckDB host (CLI, Python 2.0 or Python 1.5, each its own process) with arrowport loaded and
listening on an ephemeral loopback port, and a fresh database file per test."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hosts  # noqa: E402


class Listening:
    def __init__(self, host, db_path, addr):
        self.host, self.db_path, self.addr = host, db_path, addr

    def sql(self, query, conn=0):
        return self.host.sql(query, conn)

    def count(self, table):
        return self.sql(f'SELECT count(*) FROM "{table}"')[0][0]


@pytest.fixture(params=hosts.HOST_KINDS)
def host_kind(request):
    return request.param


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "test.duckdb")


def _listening(kind, db_path):
    host = hosts.start(kind, db_path)
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    yield Listening(host, db_path, addr)
    try:
        host.sql("SELECT arrowport_stop()")
    except Exception:
        pass
    rc = host.close()
    # The CLI exits 1 after any failed statement (expected ones included); a crash is a signal.
    assert rc in (0, 1) if kind == "cli" else rc == 0, f"host exited with {rc}: {host.stderr()[-2000:]}"


@pytest.fixture
def listening(host_kind, db_path):
    yield from _listening(host_kind, db_path)


@pytest.fixture
def py_listening(db_path):
    """A Python 2.0 host only, for tests about the protocol rather than the host."""
    yield from _listening("py20", db_path)
