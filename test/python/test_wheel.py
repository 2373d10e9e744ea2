"""The Python wheel (`make wheel`): installed with pip into a fresh virtualenv beside duckdb from PyPI (2.0 and
1.5), `arrowport serve` lands data until SIGTERM, then stops cleanly with everything acknowledged in the file;
`load()` on a connection that does not allow unsigned extensions says what to set."""
import json
import os
import signal
import socket
import subprocess
import sys

import pyarrow as pa
import pytest

from clients import flight_put

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "wheel", "build.py"),
                           "--extension", os.path.join(ROOT, "build", "release", "arrowport.duckdb_extension"),
                           "--library", os.path.join(ROOT, "target", "release", "libarrowport.so"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert os.path.basename(path).startswith("arrowport_duckdb-0.1.0-py3-none-manylinux_2_")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("duckdb_version", ["2.0.1", "1.5.6"])
def test_the_wheel_installs_with_pip_and_serves_until_sigterm(wheel, duckdb_version, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, arrowport = str(venv / "bin" / "python"), str(venv / "bin" / "arrowport")
    pip = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, f"duckdb=={duckdb_version}"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr

    plain = subprocess.run([python, "-c", "import duckdb, arrowport_duckdb; arrowport_duckdb.load(duckdb.connect())"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "allow_unsigned_extensions" in plain.stderr, plain.stderr

    db, token_file, port = str(tmp_path / "landing.duckdb"), str(tmp_path / "token"), free_port()
    server = subprocess.Popen([arrowport, "serve", db, "--listen", f"127.0.0.1:{port}", "--token-file", token_file],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = [server.stdout.readline() for _ in range(2)]
        assert any(f"rest on 127.0.0.1:{port}" in line for line in banner), banner
        assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
        with open(token_file) as f:
            token = f.read().strip()
        t = pa.table({"id": pa.array(range(1000), pa.int64()), "name": [f"n{i}" for i in range(1000)]})
        with pytest.raises(pa.ArrowException):  # a token is required
            flight_put(f"127.0.0.1:{port}", "landed", t)
        assert flight_put(f"127.0.0.1:{port}", "landed", t, token=token)["rows"] == 1000
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, out
    assert "stopped 1 listener(s)" in out, out
    check = subprocess.run([python, "-c", "import duckdb, json; c = duckdb.connect(%r, read_only=True); "
                            "print(json.dumps(c.sql('SELECT count(*), sum(id), max(name) FROM landed').fetchall()))" % db],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(check.stdout) == [[1000, 499500, "n999"]], check.stderr
