"""DuckDB hosts for the tests: the real CLI as a process, or Python `duckdb` in a process of its own.

Every host takes SQL one statement at a time and answers with rows (lists of Python values) or raises
HostError with DuckDB's message. Each runs in its own process, so a crash of the host is seen as one.
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSION = os.path.join(ROOT, "build", "release", "arrowport.duckdb_extension")
# The tests' own build (`make test-hooks`): the same library with the hooks the tests drive.
HOOKS_EXTENSION = os.path.join(ROOT, "build", "test-hooks", "arrowport.duckdb_extension")
CLI = os.path.join(ROOT, ".venv", "bin", "duckdb")
PYTHONS = {
    "py20": os.path.join(ROOT, ".venv", "bin", "python"),
    "py15": os.path.join(ROOT, ".venv15", "bin", "python"),
    # DuckDB 1.5.5 with the ducklake, postgres and httpfs extension wheels (test/lake.py).
    "lake": os.path.join(ROOT, ".venv-lake", "bin", "python"),
}
HOST_KINDS = ["cli", "py20", "py15"]


class HostError(Exception):
    pass


class HostDied(Exception):
    pass


class PythonHost:
    """Python duckdb in a child process, driven by JSON lines (see pyhost.py)."""

    def __init__(self, kind, db_path, extra_config=None, nofile=None, cpu_group=None):
        """`nofile`: the host's descriptor limit, soft and hard (as a service manager would set it). `cpu_group`: a
        cpugroup.Group the host starts inside, so that DuckDB sizes its thread pool by the CPU it finds there, as
        on a machine of its own."""
        self.kind = kind

        def limits():
            if nofile is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if cpu_group is not None:
                cpu_group.join()

        self.proc = subprocess.Popen(
            [PYTHONS[kind], os.path.join(ROOT, "test", "pyhost.py"), db_path, json.dumps(extra_config or {})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=limits if nofile is not None or cpu_group is not None else None,
        )

    def sql(self, query, conn=0):
        self.proc.stdin.write(json.dumps({"sql": query, "conn": conn}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise HostDied(f"{self.kind} host died: rc={self.proc.wait()} stderr={self.proc.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise HostError(reply["error"])
        return [tuple(r) for r in reply["rows"]]

    def register(self, name, ipc_bytes):
        """Registers an Arrow table (IPC stream bytes) for DuckDB's own in-process scan."""
        import base64
        self.proc.stdin.write(json.dumps({"register": name, "ipc": base64.b64encode(ipc_bytes).decode()}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or '{"error": "host died"}')
        if "error" in reply:
            raise HostError(reply["error"])

    def arrow(self, query, conn=0):
        """The query's result as this host's DuckDB gives it in-process, as a pyarrow Table."""
        import base64
        import pyarrow as pa
        self.proc.stdin.write(json.dumps({"arrow": query, "conn": conn}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or '{"error": "host died"}')
        if "error" in reply:
            raise HostError(reply["error"])
        return pa.ipc.open_stream(base64.b64decode(reply["ipc"])).read_all()

    def close(self, timeout=60):
        """Ends the host like a script that reaches its end: returns the exit code."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=timeout)

    def stderr(self):
        return self.proc.stderr.read()


class CliHost:
    """The DuckDB CLI binary, fed statements on stdin; each answer ends at a marker line."""

    def __init__(self, db_path):
        self.kind = "cli"
        self.proc = subprocess.Popen(
            [CLI, "-unsigned", "-json", db_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )

    def sql(self, query, conn=0):
        if conn != 0:
            raise HostError("the CLI host has one connection")
        marker = "__arrowport_" + uuid.uuid4().hex
        statement = query.strip()
        if not statement.endswith(";"):
            statement += ";"
        self.proc.stdin.write(statement + "\n.print " + marker + "\n")
        self.proc.stdin.flush()
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise HostDied(f"cli host died: rc={self.proc.wait()} output={''.join(out)[-2000:]}")
            if line.strip() == marker:
                break
            if line.startswith("arrowport: "):
                continue  # the extension's own log line (stderr goes to the same pipe)
            out.append(line)
        text = "".join(out).strip()
        if not text:
            return []
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            raise HostError(text)
        return [tuple(r.values()) for r in rows]

    def close(self, timeout=60):
        try:
            self.proc.stdin.write(".exit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=timeout)

    def stderr(self):
        return self.proc.stdout.read()


def start(kind, db_path):
    return CliHost(db_path) if kind == "cli" else PythonHost(kind, db_path)


def rss_kib(pid="self"):
    """A process's resident memory, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_mib(pid):
    """A process's resident memory, in MiB."""
    return rss_kib(pid) // 1024


class PeakRss:
    """Samples a process's RSS (KiB) every `every` seconds while the block runs: `before`, `peak` (readable while it
    runs too) and `after`."""

    def __init__(self, pid="self", every=0.02):
        self.pid, self.every, self.stop = pid, every, threading.Event()

    def __enter__(self):
        self.before = self.peak = rss_kib(self.pid)
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(self.every)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.after = rss_kib(self.pid)
        self.peak = max(self.peak, self.after)

    def growth_mib(self):
        """The peak so far over the start, in whole MiB as `rss_mib` reads them."""
        return self.peak // 1024 - self.before // 1024

    def mib(self):
        return {"rss_before_mib": self.before / 1024, "rss_peak_mib": self.peak / 1024, "rss_after_mib": self.after / 1024}


def load_sql(hooks=False):
    return f"LOAD '{HOOKS_EXTENSION if hooks else EXTENSION}'"
