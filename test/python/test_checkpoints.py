"""Checkpoints while arrowport listens (`checkpoint_wal`): DuckDB's threshold raised to a backstop and put back,
the log checkpointed by arrowport past its limit even while requests are in flight, at the operator's threshold
only at quiet moments, and the operator's own changes respected."""
import os

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import flight_put, wait_for


def rows(n, start=0):
    """`n` rows of about 200 bytes each."""
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "text": pa.array([f"{i:0>200}" for i in range(start, start + n)])})


def wal(path):
    try:
        return os.path.getsize(path + ".wal")
    except FileNotFoundError:
        return 0


def checkpoints(addr):
    text = httpx.get(f"http://{addr}/metrics").text
    lines = [line for line in text.splitlines() if line.startswith('arrowport_checkpoints_total{outcome="ok"}')]
    return int(float(lines[0].split()[-1])) if lines else 0


def threshold(h):
    return h.sql("SELECT current_setting('checkpoint_threshold')")[0][0]


def test_arrowport_checkpoints_past_its_limit_while_busy_and_at_the_operators_threshold_when_quiet(host_kind, db_path):
    h = hosts.start(host_kind, db_path)
    try:
        h.sql(hosts.load_sql())
        h.sql("SET GLOBAL checkpoint_threshold = '1MB'")
        before = threshold(h)
        addr = h.sql("FROM arrowport_listen('127.0.0.1:0', checkpoint_wal := 4000000)")[0][1]
        assert threshold(h) != before, "DuckDB's own threshold is raised to the backstop while arrowport listens"
        flight_put(addr, "t", rows(10))
        done = checkpoints(addr)

        # A request held open: arrowport is busy. Past the operator's 1 MB but under the 4 MB limit, no checkpoint.
        client = fl.connect(f"grpc://{addr}")
        w, r = client.do_put(fl.FlightDescriptor.for_path("t"), rows(1).schema)
        w.write_table(rows(100, start=1_000_000))
        sent = 10
        while wal(db_path) < 1_500_000:
            flight_put(addr, "t", rows(1000, start=sent))
            sent += 1000
        assert wal(db_path) < 4_000_000
        import time
        time.sleep(1.5)
        assert wal(db_path) >= 1_500_000, "no checkpoint under the limit while a request is in flight"
        assert checkpoints(addr) == done

        # Past the limit: checkpointed although the request is still in flight.
        while checkpoints(addr) == done:
            assert sent < 200_000, f"no checkpoint with a log of {wal(db_path)} bytes"
            flight_put(addr, "t", rows(1000, start=sent))
            sent += 1000
        assert wal(db_path) < 4_000_000
        w.done_writing()
        assert b'"rows":100' in r.read().to_pybytes().replace(b" ", b"")
        w.close()
        client.close()

        # Quiet: a log past the operator's threshold is checkpointed once no request is in flight.
        done = checkpoints(addr)
        while wal(db_path) < 1_500_000:
            flight_put(addr, "t", rows(1000, start=sent))
            sent += 1000
        wait_for(lambda: checkpoints(addr) > done, what="a checkpoint at a quiet moment")
        wait_for(lambda: wal(db_path) < 1_000_000, what="the log emptied")
        assert h.sql("SELECT count(*), count(DISTINCT id) FROM t") == [(sent + 100, sent + 100)]
        metrics = httpx.get(f"http://{addr}/metrics").text
        assert "arrowport_wal_peak_bytes" in metrics and "arrowport_checkpoint_seconds_total" in metrics
        assert h.sql("SELECT arrowport_stop()") == [(1,)]
        assert threshold(h) == before, "the operator's threshold is put back"
    finally:
        h.close()


def test_the_operators_own_checkpoint_settings_are_kept(db_path):
    h = hosts.start("py20", db_path)
    try:
        h.sql(hosts.load_sql())
        before = threshold(h)
        # checkpoint_wal := 0 leaves checkpoints to DuckDB.
        h.sql("FROM arrowport_listen('127.0.0.1:0', checkpoint_wal := 0)")
        assert threshold(h) == before
        with pytest.raises(hosts.HostError) as e:
            h.sql("FROM arrowport_listen('127.0.0.1:0', checkpoint_wal := 1000000)")
        assert "one checkpoint_wal" in str(e.value)
        h.sql("SELECT arrowport_stop()")
        with pytest.raises(hosts.HostError) as e:
            h.sql("FROM arrowport_listen('127.0.0.1:0', checkpoint_wal := -1)")
        assert "invalid value for option checkpoint_wal: -1" in str(e.value)

        # The operator sets a threshold while arrowport listens: theirs from then on, and kept after the stop.
        h.sql("SELECT arrowport_listen('127.0.0.1:0')")
        assert threshold(h) != before
        h.sql("SET GLOBAL checkpoint_threshold = '5MB'")
        mine = threshold(h)
        import time
        time.sleep(2.5)
        assert threshold(h) == mine
        h.sql("SELECT arrowport_stop()")
        assert threshold(h) == mine

        # An operator's threshold above the default limit is the limit: DuckDB's own backstop is twice it.
        h.sql("SET GLOBAL checkpoint_threshold = '1GB'")
        h.sql("SELECT arrowport_listen('127.0.0.1:0')")
        assert threshold(h) == "1.8 GiB", threshold(h)
        h.sql("SELECT arrowport_stop()")
        assert threshold(h) == "953.6 MiB"
    finally:
        h.close()


def test_a_host_exits_cleanly_while_its_checkpointer_runs_sql(host_kind, db_path, monkeypatch):
    """A host that ends like a script reaching its end, a listener running and arrowport's checkpoint thread inside
    DuckDB nearly all the time (test hook: it reads the settings and the database list every millisecond), exits
    with 0 and keeps its acknowledged rows, ten times over. Stopped only by C's exit handlers, which run after the
    destructors of the statics DuckDB made since arrowport loaded, a DuckDB 2.0 Python host died with SIGSEGV in
    most such exits (its checkpoint thread binding a statement against freed memory)."""
    monkeypatch.setenv("ARROWPORT_TEST_CHECKPOINT_TICK_MS", "1")
    for i in range(10):
        path = f"{db_path}.{i}"
        h = hosts.start(host_kind, path)
        h.sql(hosts.load_sql(hooks=True))
        addr = h.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        flight_put(addr, "t", rows(10, start=i))
        rc = h.close(timeout=60)
        assert rc == 0, f"exit {i}: {rc}: {h.stderr()[-2000:]}"
        again = hosts.start(host_kind, path)
        try:
            assert [list(r) for r in again.sql("SELECT count(*), min(id) FROM t")] == [[10, i]]
        finally:
            again.close()
