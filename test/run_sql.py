"""Runs the SQL logic tests in test/sql/*.test against every host (the DuckDB CLI, Python duckdb 2.0 and 1.5).

File format (a small subset of DuckDB's sqllogictest):

    # comment
    require arrowport                 loads the built extension (LOAD '<path>')
    statement ok                      the SQL that follows (up to a blank line) must succeed
    statement error                   it must fail; the text after ---- must occur in DuckDB's message
    query <column types>              its rows must equal the tab-separated lines after ----

Values compare as text: NULL for NULL, true/false for booleans. `__EXTENSION__` stands for the built file.
Prints one line per file and host, then "sql: N passed, M failed"; exits non-zero on any failure.
"""
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hosts  # noqa: E402


def parse(path):
    records, lines, i = [], open(path).read().splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line == "require arrowport":
            records.append(("ok", hosts.load_sql(), None, i))
            continue
        head = line.split()
        if head[0] not in ("statement", "query"):
            raise SystemExit(f"{path}:{i}: unknown record {line!r}")
        start, body = i, []
        while i < len(lines) and lines[i].strip() and lines[i].strip() != "----":
            body.append(lines[i])
            i += 1
        expected = None
        if i < len(lines) and lines[i].strip() == "----":
            i += 1
            expected = []
            while i < len(lines) and lines[i].strip():
                expected.append(lines[i])
                i += 1
        sql = "\n".join(body).replace("__EXTENSION__", hosts.EXTENSION)
        kind = "query" if head[0] == "query" else head[1]
        records.append((kind, sql, expected, start))
    return records


def text(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def run_file(kind, path):
    records = parse(path)
    with tempfile.TemporaryDirectory() as d:
        host = hosts.start(kind, os.path.join(d, "test.duckdb"))
        try:
            for rkind, sql, expected, line in records:
                where = f"{os.path.basename(path)}:{line}"
                try:
                    rows = host.sql(sql)
                    error = None
                except hosts.HostError as e:
                    rows, error = None, str(e)
                if rkind == "ok" and error is not None:
                    return f"{where}: statement failed: {error}"
                if rkind == "error":
                    if error is None:
                        return f"{where}: statement succeeded but should have failed"
                    want = "\n".join(expected or [])
                    if want and want not in error:
                        return f"{where}: error {error!r} does not contain {want!r}"
                if rkind == "query":
                    if error is not None:
                        return f"{where}: query failed: {error}"
                    got = ["\t".join(text(v) for v in r) for r in rows]
                    if got != (expected or []):
                        return f"{where}: got rows {got!r}, expected {expected!r}"
        except hosts.HostDied as e:
            return f"host died: {e}"
        finally:
            rc = host.close()
        # The CLI exits 1 after a statement failed (expected ones included); a crash is a signal.
        if rc != 0 and not (kind == "cli" and rc == 1):
            return f"host exited with {rc}: {host.stderr()[-1000:]}"
    return None


def main():
    root = os.path.dirname(os.path.abspath(__file__))
    files = sorted(glob.glob(os.path.join(root, "sql", "*.test")))
    passed = failed = 0
    for path in files:
        for kind in hosts.HOST_KINDS:
            problem = run_file(kind, path)
            name = f"{os.path.relpath(path, os.path.dirname(root))} [{kind}]"
            if problem is None:
                passed += 1
                print(f"PASS {name}")
            else:
                failed += 1
                print(f"FAIL {name}: {problem}")
    print(f"sql: {passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
