"""docs/clients.md: every example in it runs against a live host, in order, and lands exactly the rows it says.

An example is a fenced block whose info string carries `example=<name>`; the docs' address 127.0.0.1:8815 is
replaced by the test host's. The host block is run by the host itself (with the built extension's LOAD line);
a SQL block other than the host's runs in another DuckDB (a host of its own, DuckDB 1.5) with the extension loaded;
Python examples run in this interpreter's environment, shell examples in bash (with this environment's python3
first on PATH), JavaScript with Node.js and apache-arrow from npm, installed into the test's folder.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

import hosts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "clients.md")
DOC_ADDRESS = "127.0.0.1:8815"
APACHE_ARROW = "apache-arrow@21.2.0"


def examples():
    """(name, language, code) for each example block, in the order of the document."""
    with open(DOC) as f:
        text = f.read()
    found = re.findall(r"^```(\w+) example=([\w-]+)\n(.*?)^```", text, flags=re.S | re.M)
    return [(name, lang, code) for lang, name, code in found]


def statements(code):
    """A SQL block's statements (none of the docs' statements has a `;` inside a literal)."""
    return [s.strip() for s in code.split(";") if s.strip() and not all(
        line.strip().startswith("--") for line in s.strip().splitlines())]


def run(cmd, cwd, **kw):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_client_example_in_the_docs_runs_and_lands_its_rows(tmp_path):
    blocks = examples()
    names = [name for name, _, _ in blocks]
    assert names == [
        "host", "flight", "flight-key", "adbc", "curl", "javascript",
        "follow-host", "follow-flight", "follow-curl", "follow-duckdb",
    ], names
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed: the JavaScript example cannot run")
    host = hosts.start("py20", str(tmp_path / "clients.duckdb"))
    try:
        address = None
        for name, lang, code in blocks:
            if name in ("host", "follow-host"):
                assert lang == "sql"
                for statement in statements(code):
                    if statement == "LOAD arrowport":
                        host.sql(hosts.load_sql())
                    elif "arrowport_listen" in statement:
                        address = host.sql(statement.replace(DOC_ADDRESS, "127.0.0.1:0"))[0][1]
                    else:
                        host.sql(statement)
                continue
            assert address, "the host block comes first"
            code = code.replace(DOC_ADDRESS, address)
            workdir = tmp_path / name
            workdir.mkdir()
            if lang == "sql":
                # Another DuckDB: a host of its own, on a database of its own; the last statement's rows.
                other = hosts.start("py15", str(workdir / "other.duckdb"))
                try:
                    for statement in statements(code):
                        rows = other.sql(hosts.load_sql() if statement == "LOAD arrowport" else statement)
                    out = "\n".join(" ".join(str(v) for v in row) for row in rows)
                finally:
                    assert other.close() == 0
            elif lang == "python":
                out = run([sys.executable, "-c", code], workdir)
            elif lang == "sh":
                env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
                out = run(["bash", "-euo", "pipefail", "-c", code], workdir, env=env)
            elif lang == "js":
                run(["npm", "install", "--silent", "--no-audit", "--no-fund", APACHE_ARROW], workdir)
                (workdir / "example.mjs").write_text(code)
                out = run(["node", "example.mjs"], workdir)
            else:
                raise AssertionError(f"example {name}: no runner for {lang}")
            check(name, out, host)
    finally:
        try:
            host.sql("SELECT arrowport_stop()")
        finally:
            assert host.close() == 0


def check(name, out, host):
    """What each example prints and lands."""
    lines = out.strip().splitlines()
    if name == "flight":
        assert lines == ["events 3"], out
        assert host.sql("SELECT list(id ORDER BY id), list(name ORDER BY id) FROM events") == [([1, 2, 3], ["a", "b", "c"])]
    elif name == "flight-key":
        assert lines == ["2 False", "2 True"], out
        assert host.sql("SELECT list(id ORDER BY id) FROM events") == [([1, 2, 3, 4, 5],)]
    elif name == "adbc":
        assert re.search(r"Lyon\D+10\.0", out) and re.search(r"Oslo\D+3\.75", out) and re.search(r"Turin\D+9\.5", out), out
        assert host.sql("SELECT count(*), sum(km), list(DISTINCT city ORDER BY city) FROM trips") == [(5, 23.25, ["Lyon", "Oslo", "Turin"])]
    elif name == "curl":
        assert '"rows":2' in lines[0] and '"stream":"events"' in lines[0], out
        assert '"status":"committed"' in lines[1] and '"key":"curl-events-0001"' in lines[1], out
        assert host.sql("SELECT list(id ORDER BY id) FROM events") == [([1, 2, 3, 4, 5, 10, 11],)]
    elif name == "javascript":
        assert lines == ["200 3"], out
        assert host.sql("SELECT list(id ORDER BY id), list(name ORDER BY id) FROM events") == [
            ([1, 2, 3, 4, 5, 10, 11, 20, 21, 22], ["a", "b", "c", "d", "e", "x", "y", "p", "q", "r"])]
    elif name == "follow-flight":
        # Only the rows landed after the stream became followable have a position.
        assert lines == ["[30, 31, 32]", "cursor 3"], out
    elif name == "follow-curl":
        assert lines == ["3 3"], out
    elif name == "follow-duckdb":
        assert lines == ["3 32 3"], out
    else:
        raise AssertionError(f"no check for example {name}")
