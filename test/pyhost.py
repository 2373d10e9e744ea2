"""A Python DuckDB host: opens a database and runs JSON-line requests {"sql", "conn"} on stdin, or
{"register": name, "ipc": base64 Arrow IPC stream} to register an Arrow table for DuckDB's own scan, or
{"arrow": sql} for a query's result as Arrow (base64 IPC stream in "ipc").

Replies one JSON line each: {"rows": [...]} or {"error": "..."}. Connection 0 is the database's own; a request
with a higher number opens (once) another connection to the same database. At the end of stdin it exits like
a script reaching its end, with whatever is still running inside it.
"""
import datetime
import decimal
import json
import sys

import duckdb


def plain(v):
    if isinstance(v, (datetime.date, datetime.datetime, datetime.time, datetime.timedelta, decimal.Decimal)):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def main():
    config = {"allow_unsigned_extensions": "true"}
    config.update(json.loads(sys.argv[2]))
    conns = {0: duckdb.connect(sys.argv[1], config=config)}
    keep = []
    for line in sys.stdin:
        req = json.loads(line)
        n = req.get("conn", 0)
        if n not in conns:
            conns[n] = conns[0].cursor()
        try:
            if "register" in req:
                # The oracle: DuckDB's own in-process scan of an Arrow table sent as an IPC stream.
                import base64
                import pyarrow as pa
                table = pa.ipc.open_stream(base64.b64decode(req["ipc"])).read_all()
                conns[n].register(req["register"], table)
                keep.append(table)
                req["sql"] = "SELECT 1"
            if "arrow" in req:
                # A query's result as this process's DuckDB gives it as Arrow (in-process, no network).
                import base64
                import pyarrow as pa
                result = conns[n].execute(req["arrow"])
                fetch = getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table")
                table = fetch()
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
                reply = {"ipc": base64.b64encode(sink.getvalue().to_pybytes()).decode()}
            else:
                rows = conns[n].execute(req["sql"]).fetchall()
                reply = {"rows": [[plain(v) for v in r] for r in rows]}
        except Exception as e:  # DuckDB's message is what the test checks
            reply = {"error": str(e)}
        sys.stdout.write(json.dumps(reply, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
