"""A structure-aware fuzzer against a live host: what a client controls, mutated, sent over every protocol.

`make fuzz` runs it for FUZZ_SECONDS (default 600) from FUZZ_SEED (default: random, printed); `make test` runs
a short slice (test/python/test_fuzz.py). Targets, each drawn at random per input:
- `rest`: an Arrow IPC stream (several schemas, nested and dictionary types, LZ4 / ZSTD body compression) with
  bit flips, overwritten length fields and compression prefixes, truncations and splices, as `POST /streams/..`;
- `encoding`: the same bodies under `Content-Encoding: zstd` / `gzip`, the compressed bytes mutated too;
- `flight`: the mutated IPC messages as raw Flight DoPut messages, with mutated descriptors and app metadata;
- `headers`: raw HTTP/1.1 requests with mutated request lines, headers, lengths and chunked framing;
- `json`: the original JSON endpoint with mutated JSON, base64 and IPC inside (into tables outside the check);
- `flightsql`: Flight SQL commands (ingest, statements, prepared statements) as mutated protobuf bytes.

FUZZ_WORKERS client processes (default 4) generate inputs at once, each from its own seed and into its own
streams. After every round (each sends a batch of FUZZ_BATCH inputs) it checks that the host is alive and answering, and that every table holds exactly
the rows the host acknowledged (nothing partial, nothing lost). A host death or hang stops the run; the input
that caused it is written to FUZZ_CRASHES (default /tmp/arrowport-fuzz) for a regression test. The last line is
the plain summary `fuzz: N passed, M failed` (inputs run; host deaths and hangs).
"""
import base64
import functools
import gzip
import json
import multiprocessing
import os
import pickle
import random
import re
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
sys.path.insert(0, os.path.join(ROOT, "test", "python"))

import grpc  # noqa: E402
import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402

import flightraw  # noqa: E402
import hosts  # noqa: E402

ARROW = "application/vnd.apache.arrow.stream"
STREAMS = ["f0", "f1", "f2"]
BATCH = int(os.environ.get("FUZZ_BATCH", "200"))


@functools.cache
def tables():
    n = 12
    return [
        pa.table({
            "i": pa.array([1, None, 3, 4] * (n // 4), pa.int64()),
            "s": pa.array(["a", "bb", None, "dddd"] * (n // 4)),
            "d": pa.array([1.5, 2.5, None, 4.0] * (n // 4)),
            "b": pa.array([True, False, None, True] * (n // 4)),
            "ts": pa.array([1, 2, 3, None] * (n // 4), pa.timestamp("us")),
        }),
        pa.table({
            "l": pa.array([[1, 2], None, [], [3]] * (n // 4), pa.list_(pa.int32())),
            "dict": pa.array(["x", "y", "x", None] * (n // 4)).dictionary_encode(),
            "dec": pa.array([1, 2, 3, None] * (n // 4), pa.decimal128(10, 2)),
            "st": pa.array([{"a": 1, "b": "x"}, None, {"a": 2, "b": None}, {"a": None, "b": "y"}] * (n // 4)),
            "m": pa.array([[("k", 1)], None, [], [("z", 2)]] * (n // 4), pa.map_(pa.string(), pa.int64())),
        }),
        pa.table({"bin": pa.array([b"\x00\x01", None, b"", b"x" * 40] * (n // 4)), "u8": pa.array([1, 2, 3, 255] * (n // 4), pa.uint8())}),
    ]


def ipc(table, compression=None, chunk=4):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


class Mutator:
    INTERESTING32 = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    INTERESTING64 = [0, 8, -1, -2, 1 << 20, 1 << 31, 1 << 40, (1 << 63) - 1, -(1 << 63)]

    def __init__(self, rng):
        self.rng = rng

    def bytes(self, data, rounds=None):
        r = self.rng
        b = bytearray(data)
        if not b:
            return bytes(r.randbytes(r.randint(1, 64)))
        for _ in range(rounds or r.randint(1, 4)):
            k = r.random()
            if k < 0.3:
                i = r.randrange(len(b))
                b[i] ^= 1 << r.randrange(8)
            elif k < 0.5 and len(b) >= 4:
                i = r.randrange(len(b) - 3)
                b[i:i + 4] = r.choice(self.INTERESTING32).to_bytes(4, "little")
            elif k < 0.6 and len(b) >= 8:
                i = r.randrange(len(b) - 7)
                b[i:i + 8] = r.choice(self.INTERESTING64).to_bytes(8, "little", signed=True)
            elif k < 0.72:
                b = b[:r.randrange(len(b) + 1)]
            elif k < 0.85:
                i, j = r.randrange(len(b) + 1), r.randrange(len(b))
                b = b[:i] + b[j:j + r.randint(1, 96)] + b[i:]
            elif k < 0.93 and len(b) > 1:
                i = r.randrange(len(b))
                del b[i:i + r.randint(1, 32)]
            else:
                b[r.randrange(len(b))] = r.choice([0, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x5C])
            if not b:
                break
        return bytes(b)

    def prefixes(self, data):
        """Overwrites 8-byte words that look like length prefixes (small positive integers) with other lengths."""
        b = bytearray(data)
        spots = [i for i in range(0, len(b) - 7, 8) if 0 < int.from_bytes(b[i:i + 8], "little") < 1 << 24]
        for i in self.rng.sample(spots, min(len(spots), self.rng.randint(1, 2))):
            b[i:i + 8] = self.rng.choice(self.INTERESTING64).to_bytes(8, "little", signed=True)
        return bytes(b)


class RawHttp:
    """A lean HTTP/1.1 client on one keep-alive connection (httpx costs more CPU per request than the host spends
    answering a refused one). A request whose connection fails raises OSError: it is never resent, since the
    first attempt may have landed."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def post(self, path, body, headers):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        try:
            self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            return self._response()
        except (OSError, ValueError) as e:
            self.close()
            raise OSError(f"HTTP exchange failed: {e}") from e

    def _response(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed before a response")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            raise ValueError("chunked responses are not read here")
        length = int(fields.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed inside a response")
            rest += chunk
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, rest[:length]

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Inputs:
    """One generator of inputs: its own random stream, connections, and streams (so acknowledged rows per table
    are known exactly while several run at once)."""

    def __init__(self, seed, addr, streams):
        self.rng = random.Random(seed)
        self.mut = Mutator(self.rng)
        self.addr = addr
        self.port = int(addr.rsplit(":", 1)[1])
        self.streams = streams
        self.http = RawHttp(self.port)
        self.channel = grpc.insecure_channel(addr)
        self.bodies = []
        for t in tables():
            for codec in (None, "lz4", "zstd"):
                self.bodies.append(ipc(t, codec))
        self.messages = [flightraw.stream_messages(b) for b in self.bodies]  # (header, body) pairs per stream
        self.legacy_docs = []
        for t in tables():
            for target in ["legacy", "main.legacy", "x.y.z", "", "\"q\".t"]:
                doc = {"config": {"target_table": target},
                       "batch": {"arrow_schema": base64.b64encode(t.schema.serialize()).decode(), "data": base64.b64encode(ipc(t)).decode()}}
                self.legacy_docs.append(json.dumps(doc).encode())
        self.acked = {}
        self.unsure = False
        self.inputs = 0
        self.outcomes = {}
        self.last = None

    def count(self, outcome):
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.entry["outcome"] = outcome

    def ack(self, ack):
        """Counts an acknowledgement's rows under the table they landed in: a stream without a mapping lands in the
        table of its name, and DuckDB's names are case-insensitive, so a mutated name such as "F2_3" lands in f2_3."""
        table = ack["stream"].lower()
        self.acked[table] = self.acked.get(table, 0) + ack["rows"]
        self.entry.setdefault("acked", []).append((table, ack["rows"]))

    def body(self):
        base = self.rng.choice(self.bodies)
        return self.mut.prefixes(base) if self.rng.random() < 0.25 else self.mut.bytes(base)

    def post(self, path, body, headers):
        """One HTTP request; when the exchange fails it may still have landed, so the next check counts rows."""
        try:
            return self.http.post(path, body, headers)
        except OSError:
            self.unsure = True
            raise

    # ---- targets -------------------------------------------------------------------------------------

    def rest(self):
        stream = self.rng.choice(self.streams)
        data = self.body()
        self.last = ("rest", data)
        status, body = self.post(f"/streams/{stream}", data, {"Content-Type": ARROW})
        self.count(f"rest {status}")
        if status == 200:
            self.ack(json.loads(body))

    def encoding(self):
        stream = self.rng.choice(self.streams)
        data = self.rng.choice(self.bodies) if self.rng.random() < 0.5 else self.body()
        enc = self.rng.choice(["zstd", "gzip"])
        packed = pa.compress(data, codec="zstd", asbytes=True) if enc == "zstd" else gzip.compress(data)
        if self.rng.random() < 0.7:
            packed = self.mut.bytes(packed)
        self.last = (f"encoding {enc}", packed)
        status, body = self.post(f"/streams/{stream}", packed, {"Content-Type": ARROW, "Content-Encoding": enc})
        self.count(f"encoding {status}")
        if status == 200:
            self.ack(json.loads(body))

    def flight(self):
        stream = self.rng.choice(self.streams)
        pairs = self.rng.choice(self.messages)
        messages = []
        for i, (h, b) in enumerate(pairs):
            if self.rng.random() < 0.3:
                h = self.mut.bytes(h)
            if self.rng.random() < 0.3:
                b = self.mut.prefixes(b) if self.rng.random() < 0.5 else self.mut.bytes(b)
            desc = None
            if i == 0:
                desc = flightraw.descriptor(1, path=[stream])
                if self.rng.random() < 0.2:
                    desc = self.mut.bytes(desc)
            msg = flightraw.flight_data(desc, header=h, body=b)
            if self.rng.random() < 0.1:
                msg += flightraw._field(3, self.rng.randbytes(self.rng.randint(0, 64)))  # app_metadata
            messages.append(msg)
        if self.rng.random() < 0.1 and messages:
            messages[self.rng.randrange(len(messages))] = self.mut.bytes(messages[0])
        self.last = ("flight", b"".join(messages))
        try:
            results = flightraw.do_put(self.addr, messages, timeout=30, channel=self.channel)
            self.count("flight ok")
            for payload in results:
                ack = json.loads(flightraw.put_result_metadata(payload))
                self.ack(ack)
        except grpc.RpcError as e:
            self.count(f"flight {e.code().name}")
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self.unsure = True  # the connection went away (e.g. GOAWAY): the request may have committed

    def headers(self):
        r = self.rng
        data = self.rng.choice(self.bodies)
        lines = [f"POST /streams/{r.choice(self.streams)} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {ARROW}"]
        extra = [f"Content-Length: {r.choice([len(data), len(data) - 1, len(data) + 10, 0, 2**63, -1])}",
                 "Transfer-Encoding: chunked", "Content-Encoding: " + r.choice(["zstd", "gzip", "br", "identity", ""]),
                 "Content-Type: " + r.choice(["", "text/plain", ARROW + "; x=1", "application/json"]),
                 "Authorization: " + r.choice(["Bearer", "Bearer x", "Basic !!", "Basic " + base64.b64encode(b"a:b").decode()]),
                 "Origin: http://evil.example", "Host: evil.example", "Expect: 100-continue", "Connection: close"]
        lines += r.sample(extra, r.randint(1, 3))
        head = "\r\n".join(lines).encode()
        if r.random() < 0.5:
            head = self.mut.bytes(head, rounds=1)
        body = data
        if "Transfer-Encoding: chunked" in "\n".join(lines):
            body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
            if r.random() < 0.5:
                body = self.mut.bytes(body)
        raw = head + b"\r\n\r\n" + body[:r.choice([len(body), r.randrange(len(body) + 1)])]
        self.last = ("headers", raw)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
        except OSError:
            self.count("headers closed")
            reply = b""
        while reply.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\n" in reply:
            reply = reply.split(b"\r\n\r\n", 1)[1]  # an interim answer to Expect: 100-continue
        status = reply[9:12].decode(errors="replace") if reply.startswith(b"HTTP/1.1 ") else "other"
        self.count(f"headers {status}")
        if status == "200":
            try:
                ack = json.loads(reply.split(b"\r\n\r\n", 1)[1])
                self.ack(ack)
            except (ValueError, KeyError, IndexError):
                self.unsure = True  # it landed, but the reply does not say how much

    def legacy(self):
        raw = self.rng.choice(self.legacy_docs)
        if self.rng.random() < 0.8:
            raw = self.mut.bytes(raw)
        self.last = ("json", raw)
        status, _ = self.post("/stream/legacy", raw, {"Content-Type": "application/json"})
        self.count(f"json {status}")

    def flightsql_cmd(self):
        """A Flight SQL command as a mutated protobuf Any in a CMD descriptor (DoPut) or a ticket (DoGet)."""
        r = self.rng
        kind = r.choice(["CommandStatementIngest", "CommandStatementQuery", "CommandStatementUpdate",
                         "CommandPreparedStatementQuery", "CommandGetTables", "TicketStatementQuery"])
        fields = b""
        if kind == "CommandStatementIngest":
            fields = flightraw._field(2, r.choice([b"sqlin", b"streams", b"", b"x" * 300])) + flightraw._field(3, r.choice([b"main", b"arrowport"]))
        elif kind in ("CommandStatementQuery", "CommandStatementUpdate"):
            fields = flightraw._field(1, r.choice([b"SELECT 1", b"SELECT * FROM range(3)", b"FROM arrowport.streams", b"SELEC", b"\x00"]))
        else:
            fields = flightraw._field(1, r.randbytes(r.randint(0, 24)))
        any_msg = flightraw._field(1, f"type.googleapis.com/arrow.flight.protocol.sql.{kind}".encode()) + flightraw._field(2, fields)
        if r.random() < 0.6:
            any_msg = self.mut.bytes(any_msg)
        pairs = r.choice(self.messages)
        messages = [flightraw.flight_data(flightraw.descriptor(2, cmd=any_msg) if i == 0 else None, header=h, body=b)
                    for i, (h, b) in enumerate(pairs)]
        self.last = ("flightsql", any_msg)
        try:
            flightraw.do_put(self.addr, messages, timeout=30, channel=self.channel)
            self.count("flightsql ok")
        except grpc.RpcError as e:
            self.count(f"flightsql {e.code().name}")

    TARGETS = ["rest"] * 4 + ["encoding", "flight", "flight", "headers", "legacy", "flightsql_cmd"]

    def batch(self, n):
        """Runs n inputs; returns what the checker needs: inputs run, outcomes, rows acknowledged per stream."""
        self.journal = []  # this batch's inputs: what each was, how it was answered, what it acknowledged
        for _ in range(n):
            name = self.rng.choice(self.TARGETS)
            self.entry = {"target": name}
            try:
                getattr(self, name)()
            except (httpx.HTTPError, OSError) as e:
                self.count(f"client {type(e).__name__}")
            self.entry["input"] = self.last
            self.journal.append(self.entry)
            self.inputs += 1
        report = {"inputs": self.inputs, "outcomes": dict(self.outcomes), "acked": dict(self.acked), "unsure": self.unsure,
                  "last": self.last}
        self.unsure = False
        return report

    def close(self):
        self.channel.close()
        self.http.close()


def worker(seed, addr, streams, conn):
    """A worker process: runs a batch each time the checker says "go", answers with its report."""
    inputs = Inputs(seed, addr, streams)
    while (order := conn.recv()) != "stop":
        if order == "go":
            conn.send(inputs.batch(BATCH))
        else:  # ("dump", path): the last batch's journal, for a failure's regression test
            with open(order[1], "wb") as f:
                pickle.dump(inputs.journal, f)
            conn.send("dumped")
    inputs.close()


class Fuzzer:
    """The host and the checks; the inputs come from `workers` generators (processes when more than one)."""

    def __init__(self, seed, db_path, workers=1):
        self.seed = seed
        self.workers = workers
        self.host = hosts.start("py20", db_path)
        self.host.sql(hosts.load_sql())
        self.addr = self.host.sql(
            "SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_write', stall_timeout := 2, "
            "max_message_bytes := 16777216)"
        )[0][0]
        self.client = httpx.Client(timeout=30)
        self.streams = {w: [f"{s}_{w}" for s in STREAMS] for w in range(workers)}
        self.reports = {}
        self.journals = None  # a folder: on a failure, every worker's last batch is saved there
        self.inputs = 0
        self.outcomes = {}
        self.last = None

    # ---- checks -------------------------------------------------------------------------------------

    def alive(self):
        if self.host.proc.poll() is not None:
            return f"the host died (exit {self.host.proc.returncode}): {self.host.stderr()[-2000:]}"
        try:
            r = self.client.get(f"http://{self.addr}/health", timeout=30)
            if r.status_code != 200:
                return f"/health answered {r.status_code}"
        except Exception as e:
            return f"the host does not answer: {e}"
        return None

    def check_rows(self, reports):
        """Every table holds exactly the rows acknowledged into it, by any generator (a mutated stream name can
        land in another generator's table); where a reply was unclear, what landed is taken as acknowledged."""
        acked = {}
        for report in self.reports.values():
            for table, rows in report["acked"].items():
                acked[table] = acked.get(table, 0) + rows
        names = {stream for w in self.streams for stream in self.streams[w]}
        names |= {t for t in acked if re.fullmatch("[a-z0-9_]+", t)}
        listed = ", ".join(f"'{n}'" for n in sorted(names))
        existing = [t for (t,) in self.host.sql(f"SELECT table_name FROM duckdb_tables() WHERE lower(table_name) IN ({listed})")]
        counts = {}
        if existing:  # table names keep the case they were made with: "f1W3" is table f1w3
            union = " UNION ALL ".join(f"SELECT '{t.lower()}', count(*) FROM \"{t}\"" for t in existing)
            counts = dict(self.host.sql(union))
        unsure = any(r["unsure"] for r in reports.values())
        for name in sorted(names):
            landed, expected = counts.get(name, 0), acked.get(name, 0) + self.adjust.get(name, 0)
            if unsure:
                self.adjust[name] = self.adjust.get(name, 0) + landed - expected
            elif landed != expected:
                return f"table {name} holds {landed} rows, {expected} were acknowledged"
        return None

    def run(self, seconds, max_inputs=None):
        """Rounds until the deadline: every generator runs a batch, then the host is checked."""
        self.adjust = {}
        deadline = time.monotonic() + seconds
        failure = None
        if self.workers == 1:
            gens = [Inputs(self.seed, self.addr, self.streams[0])]
            step = [lambda: gens[0].batch(BATCH)]
        else:
            ctx = multiprocessing.get_context("fork")
            pipes, procs = [], []
            for w in range(self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker, args=(self.seed * 1000 + w, self.addr, self.streams[w], child), daemon=True)
                proc.start()
                pipes.append(parent)
                procs.append(proc)
        try:
            while time.monotonic() < deadline and (max_inputs is None or self.inputs < max_inputs):
                if self.workers == 1:
                    reports = {0: step[0]()}
                else:
                    for pipe in pipes:
                        pipe.send("go")
                    reports = {}
                    for w, pipe in enumerate(pipes):
                        if not pipe.poll(300):
                            failure = f"worker {w} did not finish its batch within 300 s (a hang)"
                            break
                        reports[w] = pipe.recv()
                    if failure:
                        break
                self.reports.update(reports)
                self.inputs = sum(r["inputs"] for r in self.reports.values())
                self.last = next((r["last"] for r in reports.values() if r["last"]), self.last)
                failure = self.alive() or self.check_rows(reports)
                if failure:
                    if self.workers > 1 and self.journals:
                        for w, pipe in enumerate(pipes):
                            pipe.send(("dump", os.path.join(self.journals, f"journal-{self.seed}-{w}.pickle")))
                            pipe.poll(30) and pipe.recv()
                    break
        finally:
            if self.workers == 1:
                gens[0].close()
            else:
                for pipe in pipes:
                    try:
                        pipe.send("stop")
                    except OSError:
                        pass
                for proc in procs:
                    proc.join(10)
                    if proc.is_alive():
                        proc.kill()
        self.outcomes = {}
        for r in self.reports.values():
            for k, v in r["outcomes"].items():
                self.outcomes[k] = self.outcomes.get(k, 0) + v
        return failure

    def close(self):
        self.client.close()
        try:
            self.host.sql("SELECT arrowport_stop()")
        except Exception:
            pass
        try:
            return self.host.close(timeout=60)
        except Exception:
            self.host.proc.kill()
            return None


def main():
    seconds = float(os.environ.get("FUZZ_SECONDS", "600"))
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(1 << 32))
    crashes = os.environ.get("FUZZ_CRASHES", "/tmp/arrowport-fuzz")
    os.makedirs(crashes, exist_ok=True)
    db = os.path.join(crashes, f"fuzz-{seed}.duckdb")
    for f in (db, db + ".wal"):
        if os.path.exists(f):
            os.remove(f)
    workers = int(os.environ.get("FUZZ_WORKERS", "4"))
    print(f"fuzz: seed {seed}, {seconds:.0f} s, {workers} client process(es)", flush=True)
    fz = Fuzzer(seed, db, workers)
    fz.journals = crashes
    started = time.monotonic()
    failure = fz.run(seconds)
    elapsed = time.monotonic() - started
    if failure and fz.last:
        path = os.path.join(crashes, f"crash-{seed}-{fz.inputs}-{fz.last[0].split()[0]}.bin")
        with open(path, "wb") as f:
            f.write(fz.last[1])
        print(f"fuzz: FAILED after {fz.inputs} inputs: {failure}\nfuzz: last input ({fz.last[0]}) in {path}", flush=True)
    rc = fz.close()
    print(f"fuzz: {fz.inputs} inputs in {elapsed:.0f} s ({fz.inputs / max(elapsed, 1e-9):.0f}/s); outcomes:", flush=True)
    for k in sorted(fz.outcomes):
        print(f"  {k}: {fz.outcomes[k]}")
    if not failure and rc not in (0, None):
        failure = f"the host exited with {rc}"
    print(f"fuzz: {fz.inputs} passed, {1 if failure else 0} failed")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
