"""The CPU groups `make bench-lake` runs each host in hold a host to its share: a host in a group of a quarter core
that has more than that to do is throttled (the group's cpu.stat says so) and uses about a quarter core, while the
same work outside any group uses more. Keeps the bench from silently running unconstrained."""
import os
import time

import pytest

import cpugroup
import hosts

WORK = "SELECT sum(hash(i)) FROM range(200000000) t(i)"


def busy_cores(host, seconds):
    """Runs CPU-bound queries in the host for about `seconds`; the cores it used meanwhile (CPU time / wall)."""
    pid = host.proc.pid
    cpu, started = cpugroup.cpu_seconds(pid), time.time()
    while time.time() - started < seconds:
        host.sql(WORK)
    return (cpugroup.cpu_seconds(pid) - cpu) / (time.time() - started)


def test_a_host_in_a_quarter_core_group_is_held_to_it(tmp_path):
    why = cpugroup.why_missing()
    if why:
        pytest.skip(f"no CPU group can be made here: {why}")
    host = hosts.start("py20", str(tmp_path / "g.duckdb"))
    try:
        host.sql(hosts.load_sql())
        host.sql("SET threads = 2")
        free = busy_cores(host, 1.5)
        with cpugroup.Group("test", cores=0.25) as group:
            group.add(host.proc.pid)
            assert host.proc.pid in group.pids()
            held = busy_cores(host, 3)
            stat = group.stat()
        assert stat["nr_throttled"] > 0 and stat["throttled_time"] > 0, stat
        assert held < 0.4, f"a quarter-core group let the host use {held:.2f} cores"
        assert free > 0.6, f"outside the group the host used only {free:.2f} cores: the comparison says nothing"
    finally:
        host.close()


@pytest.mark.parametrize("kind", ["py20", "lake"])
def test_a_host_started_inside_a_quarter_core_group_runs_one_duckdb_thread(tmp_path, kind):
    """The lake bench starts each host inside its group, as on a machine of its own: DuckDB sizes its thread pool
    by the CPU it finds at start, one thread for a quarter core (a second one would only take turns with the first
    inside the share), where outside any group it takes this machine's cores."""
    why = cpugroup.why_missing()
    if why:
        pytest.skip(f"no CPU group can be made here: {why}")
    outside = hosts.PythonHost(kind, str(tmp_path / "out.duckdb"))
    try:
        free_threads = outside.sql("SELECT current_setting('threads')")[0][0]
    finally:
        outside.close()
    with cpugroup.Group("threads", cores=0.25) as group:
        host = hosts.PythonHost(kind, str(tmp_path / "in.duckdb"), cpu_group=group)
        try:
            assert host.proc.pid in group.pids()
            assert host.sql("SELECT current_setting('threads')")[0][0] == 1
        finally:
            host.close()
    if (os.cpu_count() or 1) >= 2:
        assert free_threads >= 2, f"outside any group the host took {free_threads} thread(s): the comparison says nothing"
