"""A DuckLake world for the tests, made from scratch on private loopback ports: PostgreSQL (Debian's server, as
the catalog), moto (as S3, for the data files), and DuckDB 1.5.5 hosts in the `.venv-lake` virtualenv, the one
DuckDB release whose ducklake, postgres and httpfs extensions are on PyPI (`test/requirements-lake.txt`).
The extensions are loaded from their wheels' files, so nothing is downloaded."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import httpx

import hosts

VENV = os.path.join(hosts.ROOT, ".venv-lake")
PYTHON = os.path.join(VENV, "bin", "python")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [""]
PG_BIN = PG_BIN[0]
BUCKET = "lake"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extension_file(name):
    """A 1.5.5 extension's file inside its wheel in the lake virtualenv."""
    found = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", f"duckdb_extension_*", "extensions", "v1.5.5",
                                   f"{name}.duckdb_extension"))
    if not found:
        raise RuntimeError(f"{name}.duckdb_extension is not in {VENV}: run make venvs")
    return found[0]


def why_missing():
    """Why the lake world cannot be made here, or None."""
    if not os.path.exists(PYTHON):
        return f"{PYTHON} is missing (make venvs makes it)"
    if not PG_BIN or not os.path.exists(os.path.join(PG_BIN, "postgres")):
        return "PostgreSQL's server is not installed (Debian package postgresql; .ci/run installs it)"
    return None


class Postgres:
    """A PostgreSQL server of its own: data and socket under `directory`, listening on a free loopback port."""

    def __init__(self):
        # A directory of its own under /tmp: as root the server runs as the postgres user, who cannot enter a
        # test's private temporary directory.
        self.dir = tempfile.mkdtemp(prefix="arrowport-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_user = []
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            pw = pwd.getpwnam("postgres")
            shutil.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.run(os.path.join(PG_BIN, "initdb"), "--no-sync", "-A", "trust", "-U", "postgres", "-D", self.data)
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self.run(os.path.join(PG_BIN, "pg_ctl"), "-w", "-t", "60", "-D", self.data, "-o", options, "-l",
                 os.path.join(self.dir, "log"), "start")
        self.run(os.path.join(PG_BIN, "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "lake")

    def run(self, *args):
        subprocess.run(self.as_user + list(args), check=True, capture_output=True, timeout=120)

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} dbname=lake user=postgres"

    def stop(self):
        subprocess.run(self.as_user + [os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class Delayed:
    """PostgreSQL `delay_ms` of round trip further away, behind a relay process of its own (test/delay_relay.py;
    this machine's kernel has no `netem`), as a catalog on another machine would be."""

    def __init__(self, pg, delay_ms):
        import sys
        self.pg, self.port = pg, free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "delay_relay.py"),
                                      str(self.port), "127.0.0.1", str(pg.port), str(delay_ms)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying relay did not start")

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} dbname=lake user=postgres"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.pg.stop()


class Moto:
    """moto's S3 server on a free loopback port, with one bucket."""

    def __init__(self, directory):
        self.port = free_port()
        self.log = open(os.path.join(directory, "moto.log"), "w")
        self.proc = subprocess.Popen([os.path.join(VENV, "bin", "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                httpx.put(f"http://127.0.0.1:{self.port}/{BUCKET}", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto did not start")
                time.sleep(0.2)

    def objects(self, prefix=""):
        """Keys of the bucket's objects (S3 ListObjectsV2, unsigned: moto accepts it)."""
        import re
        keys, token = [], None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            body = httpx.get(f"http://127.0.0.1:{self.port}/{BUCKET}", params=params, timeout=30).text
            keys += re.findall(r"<Key>([^<]+)</Key>", body)
            m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
            if not m:
                return keys
            token = m.group(1)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


class World:
    """PostgreSQL + moto, and the SQL a host runs to attach the lake as `lake`."""

    def __init__(self, directory, pg_delay_ms=0):
        self.dir = directory
        self.pg = Postgres()
        if pg_delay_ms:
            self.pg = Delayed(self.pg, pg_delay_ms)
        try:
            self.s3 = Moto(directory)
        except Exception:
            self.pg.stop()
            raise

    def attach_sql(self, name="lake", inline_rows=None):
        return [
            f"LOAD '{extension_file('ducklake')}'",
            f"LOAD '{extension_file('postgres_scanner')}'",
            f"LOAD '{extension_file('httpfs')}'",
            f"CREATE OR REPLACE SECRET lake_s3 (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', "
            f"ENDPOINT '127.0.0.1:{self.s3.port}', URL_STYLE 'path', USE_SSL false)",
            f"ATTACH IF NOT EXISTS 'ducklake:postgres:{self.pg.dsn()}' AS {name} (DATA_PATH 's3://{BUCKET}/data/'"
            + ("" if inline_rows is None else f", DATA_INLINING_ROW_LIMIT {inline_rows}") + ")",
        ]

    def host(self, db_path, listen=True, inline_rows=None, options="", cpu_group=None):
        """A DuckDB 1.5.5 host with the lake attached and arrowport loaded (and listening, with `options`: more of
        arrowport_listen's arguments, `, name := value...`); started inside `cpu_group` if given."""
        h = hosts.PythonHost("lake", db_path, cpu_group=cpu_group)
        for sql in self.attach_sql(inline_rows=inline_rows):
            h.sql(sql)
        h.sql(hosts.load_sql())
        if listen:
            if options:  # the table form takes options; its second column is the address
                h.addr = h.sql(f"FROM arrowport_listen('127.0.0.1:0'{options})")[0][1]
            else:
                h.addr = h.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
        return h

    def close(self):
        self.s3.stop()
        self.pg.stop()
