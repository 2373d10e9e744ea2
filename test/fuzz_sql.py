"""A grammar fuzzer for SQL over Flight SQL: statements a client allowed SQL may send, generated from DuckDB
features (nested expressions and types, casts, lambdas, subqueries and CTEs, table functions, `query()`, window
functions, statements that must be refused), sent through the ADBC Flight SQL driver to a live host listening
with `sql := 'read_only'`.

`make fuzz-sql` (and `make fuzz`, after the protocol fuzzer) sends FUZZ_SQL_STATEMENTS (default 100,000) from
FUZZ_SEED (default: random, printed) over FUZZ_SQL_CLIENTS connections (default 4, as many as the host's
statement pool). After every FUZZ_SQL_BATCH statements it checks that the host process is alive, `/health`
answers and a fresh connection runs `SELECT 42`, and that ingest still lands. A statement that gets no answer
within 60 s is a hang. The last line is the plain summary `fuzz-sql: N passed, M failed` (statements run; host
deaths and hangs); the statement that preceded a failure is printed.
"""
import os
import random
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test"))
sys.path.insert(0, os.path.join(ROOT, "test", "python"))

import adbc_driver_flightsql.dbapi as flight_sql  # noqa: E402
import httpx  # noqa: E402

import hosts  # noqa: E402
from clients import ipc_bytes  # noqa: E402
from testdata import events  # noqa: E402

FUNCTIONS_1 = ["abs", "length", "upper", "lower", "md5", "hash", "reverse", "trim", "ceil", "floor", "sign", "typeof",
               "to_json", "epoch", "array_length", "list_sort", "list_distinct", "unnest", "try", "isnan", "bit_count"]
FUNCTIONS_N = ["concat", "coalesce", "greatest", "least", "list_value", "nullif", "substr", "round", "repeat", "left",
               "regexp_matches", "strftime", "date_trunc", "list_concat", "struct_pack", "map", "array_slice"]
TYPES = ["INTEGER", "BIGINT", "HUGEINT", "UBIGINT", "DOUBLE", "DECIMAL(18,3)", "VARCHAR", "BLOB", "DATE", "TIME",
         "TIMESTAMP", "TIMESTAMPTZ", "INTERVAL", "UUID", "BOOLEAN", "INTEGER[]", "VARCHAR[]", "STRUCT(a INTEGER, b VARCHAR)",
         "MAP(VARCHAR, INTEGER)", "INTEGER[3]", "BIT", "JSON", "UNION(i INTEGER, s VARCHAR)"]
# Every source has columns x and y, so that most generated statements bind; a few fail on purpose.
TABLES = ["(SELECT range AS x, range::VARCHAR AS y FROM range(10))", "(SELECT range AS x, NULL AS y FROM range(0))",
          "(VALUES (1, 'a'), (2, NULL)) v(x, y)", "t", "(SELECT unnest([1, 2, NULL]) AS x, 'u' AS y)",
          "query('SELECT 1 AS x, 2 AS y')", "(SELECT generate_series AS x, 'g' AS y FROM generate_series(1, 5))",
          "(SELECT database_size AS x, database_name AS y FROM pragma_database_size())",
          "read_csv('/nonexistent/arrowport-fuzz.csv')", "checkpoint()", "glob('/nonexistent/*')"]
REFUSED = ["INSERT INTO t VALUES (1, 'x')", "CREATE TABLE u (i INTEGER)", "DROP TABLE t", "SET threads = 1", "PRAGMA version",
           "ATTACH ':memory:' AS m", "COPY t TO '/tmp/arrowport-fuzz-copy.csv'", "INSTALL spatial", "LOAD spatial",
           "CREATE MACRO m() AS 1", "BEGIN", "CHECKPOINT", "SELECT nextval('s')", "SELECT st_point(1, 2)",
           "FROM arrowport_tokens()", "SELECT arrowport_stop()", "FROM query('SELECT ar' || 'rowport_stop()')",
           "UPDATE t SET x = 0", "EXPORT DATABASE '/tmp/arrowport-fuzz-export'", "VACUUM", "DETACH arrowport_scratch"]


class Grammar:
    def __init__(self, rng):
        self.r = rng

    def literal(self):
        r = self.r
        return r.choice([
            str(r.randint(-10**6, 10**6)), f"{r.uniform(-1e6, 1e6):.3f}", "NULL", "true", "false",
            repr("".join(r.choice("ab'%_\\é🦆") for _ in range(r.randint(0, 8)))).replace("\\'", "''"),
            "DATE '2024-02-29'", "TIMESTAMP '2024-01-01 12:00:00'", "INTERVAL 3 DAY", "'nan'::DOUBLE",
            "[1, 2, 3]", "{'a': 1, 'b': 'x'}", "MAP {'k': 1}", "'\\x00\\xff'::BLOB", "9223372036854775807",
            "-170141183460469231731687303715884105728::HUGEINT", "''", "'2024-13-45'",
        ])

    def expr(self, depth=0):
        r = self.r
        if depth > 6 or r.random() < 0.25:
            return r.choice([self.literal(), "x", "y", "x", "42"])
        k = r.randrange(12)
        e = lambda: self.expr(depth + 1)  # noqa: E731
        if k == 0:
            return f"({e()} {r.choice(['+', '-', '*', '/', '%', '||', '=', '<', '>=', '<>', 'AND', 'OR', 'LIKE', 'IS DISTINCT FROM'])} {e()})"
        if k == 1:
            return f"{r.choice(FUNCTIONS_1)}({e()})"
        if k == 2:
            return f"{r.choice(FUNCTIONS_N)}({', '.join(e() for _ in range(r.randint(1, 3)))})"
        if k == 3:
            return f"{r.choice(['CAST', 'TRY_CAST'])}({e()} AS {r.choice(TYPES)})"
        if k == 4:
            return f"CASE WHEN {e()} THEN {e()} ELSE {e()} END"
        if k == 5:
            return f"(SELECT {e()})"
        if k == 6:
            return f"list_transform({r.choice(['[1, 2, 3]', 'range(5)', '[]'])}, v -> {e()})"
        if k == 7:
            return f"NOT {e()}"
        if k == 8:
            return f"{e()} IN ({e()}, {e()})"
        if k == 9:
            return f"row_number() OVER (ORDER BY {e()})"
        if k == 10:
            return f"{r.choice(['count', 'sum', 'min', 'max', 'string_agg', 'list', 'any_value'])}({e()})"
        return f"{e()}::{r.choice(TYPES)}"

    def deep(self):
        """Nesting near DuckDB's own limits (expressions, types, subqueries, calls)."""
        r = self.r
        n = r.choice([50, 200, 490, 999, 1500])
        return r.choice([
            "SELECT " + "(" * n + "1" + " + 1)" * n,
            "SELECT " + "abs(" * n + "1" + ")" * n,
            "SELECT " + "(SELECT " * min(n, 400) + "1" + ")" * min(n, 400),
            "SELECT NULL::" + "STRUCT(a " * min(n, 60) + "INTEGER" + ")" * min(n, 60),
            "SELECT " + "[" * min(n, 200) + "1" + "]" * min(n, 200),
        ])

    def select(self):
        r = self.r
        cols = ", ".join(f"{self.expr()} AS c{i}" for i in range(r.randint(1, 4)))
        sql = f"SELECT {cols} FROM {r.choice(TABLES)}"
        if r.random() < 0.3:
            sql += f" WHERE {self.expr()}"
        if r.random() < 0.2:
            sql += " GROUP BY ALL"
        if r.random() < 0.2:
            sql += " ORDER BY 1"
        if r.random() < 0.3:
            sql += f" LIMIT {r.randint(0, 100)}"
        if r.random() < 0.15:
            sql = f"WITH w AS ({sql}) SELECT * FROM w, w AS w2 LIMIT 50"
        if r.random() < 0.1:
            sql = f"{sql} UNION ALL {sql}"
        if r.random() < 0.05:
            sql = "WITH RECURSIVE q(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM q WHERE n < 1000) SELECT count(*) FROM q"
        if r.random() < 0.05:
            sql = f"FROM query('{sql.replace(chr(39), chr(39) * 2)}')"
        return sql

    def statement(self):
        r = self.r.random()
        if r < 0.08:
            return self.deep()
        if r < 0.16:
            return self.r.choice(REFUSED)
        if r < 0.18:
            return self.r.choice(["", ";", "SELECT", "SELEC 1", "SELECT 1; SELECT 2", "/* */", "SELECT '\x00'"])
        return self.select()


def run(statements, seed, clients, batch):
    host = hosts.start("py20", os.path.join("/tmp", f"arrowport-fuzz-sql-{seed}.duckdb"))
    host.sql(hosts.load_sql())
    host.sql("CREATE OR REPLACE TABLE t AS SELECT range AS x, 'v' || range AS y FROM range(20)")
    host.sql("CREATE SEQUENCE IF NOT EXISTS s")
    addr = host.sql("SELECT address FROM arrowport_listen('127.0.0.1:0', sql := 'read_only', statement_timeout := 2)")[0][0]
    http = httpx.Client(timeout=30)
    outcomes = {}
    sent = [0]
    last = [None]
    lock = threading.Lock()
    failure = None

    def alive():
        if host.proc.poll() is not None:
            return f"the host died (exit {host.proc.returncode}): {host.stderr()[-2000:]}"
        try:
            if http.get(f"http://{addr}/health").status_code != 200:
                return "/health did not answer 200"
            with flight_sql.connect(f"grpc://{addr}") as c, c.cursor() as cur:
                cur.execute("SELECT 42 AS x")
                if cur.fetchall() != [(42,)]:
                    return "SELECT 42 gave a wrong answer"
            if http.post(f"http://{addr}/streams/fuzz_ingest", content=ipc_bytes(events(3)),
                         headers={"Content-Type": "application/vnd.apache.arrow.stream"}).status_code != 200:
                return "ingest failed"
        except Exception as e:  # noqa: BLE001
            return f"the host does not answer: {e}"
        return None

    def client(i, todo):
        rng = random.Random(seed * 1000 + i)
        g = Grammar(rng)
        conn = flight_sql.connect(f"grpc://{addr}")
        try:
            for _ in range(todo):
                sql = g.statement()
                with lock:
                    last[0] = sql
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                        cur.fetch_arrow_table()
                    kind = "ok"
                except Exception as e:  # noqa: BLE001
                    text = str(e)
                    kind = text.split("]", 1)[-1].strip().split(":", 1)[0][:40] if "]" in text else type(e).__name__
                with lock:
                    outcomes[kind] = outcomes.get(kind, 0) + 1
                    sent[0] += 1
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    started = time.monotonic()
    done = 0
    try:
        while done < statements and not failure:
            n = min(batch, statements - done)
            shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
            threads = [threading.Thread(target=client, args=(done + i, s), daemon=True) for i, s in enumerate(shares) if s]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60 + 10 * max(shares))
                if t.is_alive():
                    failure = f"a statement got no answer (a hang); the last sent: {last[0]!r}"
                    break
            done += n
            failure = failure or alive()
    finally:
        elapsed = time.monotonic() - started
        try:
            host.sql("SELECT arrowport_stop()")
        except Exception:  # noqa: BLE001
            pass
        rc = host.close(timeout=60) if host.proc.poll() is None else host.proc.returncode
        http.close()
    if failure:
        print(f"fuzz-sql: FAILED after {sent[0]} statements: {failure}\nfuzz-sql: last statement: {last[0]!r}", flush=True)
    elif rc not in (0, None):
        failure = f"the host exited with {rc}"
    print(f"fuzz-sql: {sent[0]} statements in {elapsed:.0f} s ({sent[0] / max(elapsed, 1e-9):.0f}/s); outcomes:")
    for k in sorted(outcomes, key=lambda k: -outcomes[k])[:25]:
        print(f"  {k}: {outcomes[k]}")
    print(f"fuzz-sql: {sent[0]} passed, {1 if failure else 0} failed")
    return 1 if failure else 0


def main():
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(1 << 32))
    statements = int(os.environ.get("FUZZ_SQL_STATEMENTS", "100000"))
    clients = int(os.environ.get("FUZZ_SQL_CLIENTS", "4"))
    batch = int(os.environ.get("FUZZ_SQL_BATCH", "2000"))
    print(f"fuzz-sql: seed {seed}, {statements} statements, {clients} client(s)", flush=True)
    return run(statements, seed, clients, batch)


if __name__ == "__main__":
    sys.exit(main())
