"""The fuzzer's short slice (`make fuzz` is the long run): a fixed seed, so a failure here reproduces with
FUZZ_SEED; the host must survive every input, keep answering, and hold exactly the rows it acknowledged."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_short_fuzz_run_kills_nothing_and_loses_nothing(tmp_path):
    env = dict(os.environ, FUZZ_SECONDS="30", FUZZ_SEED="20261203", FUZZ_CRASHES=str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "test", "fuzz.py")], env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    last = [line for line in out.splitlines() if line.startswith("fuzz: ") and " passed, " in line][-1]
    inputs = int(last.split()[1])
    assert inputs >= 1000 and last.endswith("passed, 0 failed"), out[-4000:]


def test_a_short_run_of_generated_sql_kills_and_hangs_nothing(tmp_path):
    env = dict(os.environ, FUZZ_SQL_STATEMENTS="600", FUZZ_SQL_BATCH="300", FUZZ_SEED="20261206")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "test", "fuzz_sql.py")], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    last = [line for line in out.splitlines() if line.startswith("fuzz-sql: ") and " passed, " in line][-1]
    assert last == "fuzz-sql: 600 passed, 0 failed", out[-4000:]
    # Some statements ran to the end, and the refusals answered as refusals.
    assert "  ok: " in out and "checkpoint() changes the database" in out, out[-4000:]
