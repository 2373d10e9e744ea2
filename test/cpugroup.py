"""CPU groups: a process held to a fixed share of a core, as a machine of its own would hold it (cgroup v1's cpu
controller: `cpu.cfs_quota_us` per `cpu.cfs_period_us`; `cpu.stat` counts the periods it was throttled in).

    why = cpugroup.why_missing()          # None, or why no group can be made here (the caller runs unconstrained)
    with cpugroup.Group("host-1", cores=0.25) as g:
        g.add(pid)                        # the whole process, its threads and the threads it starts later
        g.join()                          # the calling process (a child before exec: see hosts.PythonHost)
        ...
        g.stat()                          # {"nr_periods": ..., "nr_throttled": ..., "throttled_time": ...}
"""
import os

ROOT = "/sys/fs/cgroup/cpu"
PERIOD_US = 100_000


def why_missing():
    """Why a CPU group cannot be made on this machine, or None."""
    if not os.path.isfile(os.path.join(ROOT, "cpu.cfs_quota_us")):
        return f"no cgroup v1 cpu controller mounted at {ROOT}"
    if os.geteuid() != 0:
        return "CPU groups need root (cgroup v1 directories are root's)"
    return None


def cpu_seconds(pid):
    """A process's CPU time so far (user + system, all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Group:
    def __init__(self, name, cores):
        problem = why_missing()
        if problem:
            raise RuntimeError(problem)
        self.cores = cores
        self.path = os.path.join(ROOT, f"arrowport-{name}-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        self._write("cpu.cfs_period_us", PERIOD_US)
        self._write("cpu.cfs_quota_us", int(cores * PERIOD_US))

    def _write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(f"{value}\n")

    def add(self, pid):
        """Moves a process (every thread of it) into the group."""
        self._write("cgroup.procs", pid)

    def join(self):
        """Moves the calling process into the group (a child about to exec: it starts there, and what it reads of
        its CPU at start, as DuckDB does to size its thread pool, is the group's share)."""
        self.add(os.getpid())

    def pids(self):
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]

    def stat(self):
        with open(os.path.join(self.path, "cpu.stat")) as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}

    def close(self):
        """Moves what is left back to the root group and removes the group."""
        for pid in self.pids():
            try:
                with open(os.path.join(ROOT, "cgroup.procs"), "w") as f:
                    f.write(f"{pid}\n")
            except OSError:
                pass  # already gone
        try:
            os.rmdir(self.path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
