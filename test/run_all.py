"""`make test`: formatting and lints, Rust unit tests, the SQL logic tests on every host, then the end-to-end
pytest suite.

Each stage prints its own report; the last line sums them up as "total: N passed, M failed".
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run(name, cmd, patterns):
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    passed = failed = 0
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        for pattern, kind in patterns:
            m = re.search(pattern, line)
            if m:
                if kind == "passed":
                    passed += int(m.group(1))
                else:
                    failed += int(m.group(1))
    rc = proc.wait()
    if not patterns:  # a check: it passes or fails as a whole
        passed = int(rc == 0)
    if rc != 0 and failed == 0:
        failed = 1  # the stage failed without a count: count it once
    return passed, failed, rc


def main():
    stages = [
        ("fmt", ["cargo", "fmt", "--check"], []),
        ("clippy", ["cargo", "clippy", "--release", "--lib", "--tests", "--", "-D", "warnings"], []),
        ("unit", ["cargo", "test", "--release", "--lib"],
         [(r"test result: \w+\. (\d+) passed", "passed"), (r"test result: .*; (\d+) failed", "failed")]),
        ("sql", [PY, "test/run_sql.py"],
         [(r"^sql: (\d+) passed", "passed"), (r"^sql: \d+ passed, (\d+) failed", "failed")]),
        ("e2e", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test/python"],
         [(r"(\d+) passed", "passed"), (r"(\d+) failed", "failed"), (r"(\d+) error", "failed")]),
    ]
    total_p = total_f = 0
    bad = []
    for name, cmd, patterns in stages:
        p, f, rc = run(name, cmd, patterns)
        total_p += p
        total_f += f
        if rc != 0 or p == 0:
            bad.append(name)
    print(f"stages failed: {', '.join(bad)}" if bad else "all stages passed")
    print(f"total: {total_p} passed, {total_f} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
