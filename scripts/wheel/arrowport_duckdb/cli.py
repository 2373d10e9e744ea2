"""`arrowport serve DB_FILE --listen HOST:PORT`: a DuckDB host with arrowport listening until SIGTERM or Ctrl-C,
then a clean stop (requests in flight end or roll back; everything acknowledged is committed) and a checkpoint."""
import argparse
import os
import signal
import sys
import threading

from . import __version__, connect

TOKEN_NAME = "arrowport-serve"


def quote(text):
    return "'" + text.replace("'", "''") + "'"


def token_from_file(con, path):
    """The token clients present: kept in `path` (mode 0600). Made on the first start; made again when the file
    is gone (the database holds only a hash, so a lost secret cannot be read back)."""
    names = {r[0] for r in con.sql("SELECT name FROM arrowport_tokens()").fetchall()}
    if os.path.exists(path) and TOKEN_NAME in names:
        return
    if TOKEN_NAME in names:
        con.sql(f"FROM arrowport_revoke_token({quote(TOKEN_NAME)})").fetchall()
    secret = con.sql(f"SELECT token FROM arrowport_create_token({quote(TOKEN_NAME)})").fetchall()[0][0]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def serve(argv=None):
    p = argparse.ArgumentParser(prog="arrowport serve", description=__doc__)
    p.add_argument("database", help="the DuckDB database file to land data in (created if missing)")
    p.add_argument("--listen", default="127.0.0.1:8815", help="HOST:PORT for Flight, Flight SQL and REST (default %(default)s)")
    p.add_argument("--token-file", help="require a token; keep it in this file (made on the first start)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve grpc+tls:// and https://")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--sql", choices=["off", "read_only", "read_write"], default="off", help="SQL over Flight SQL (default off)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")

    con = connect(args.database)
    options = [f"sql := {quote(args.sql)}"]
    if args.token_file:
        token_from_file(con, args.token_file)
        options.append("auth := 'token'")
    if args.tls_cert:
        options += [f"tls_cert := {quote(args.tls_cert)}", f"tls_key := {quote(args.tls_key)}"]
    rows = con.sql(f"FROM arrowport_listen({quote(args.listen)}, {', '.join(options)})").fetchall()
    for protocol, address in rows:
        print(f"arrowport {__version__}: {protocol} on {address}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    stopped = con.sql("SELECT arrowport_stop()").fetchall()[0][0]
    con.execute("CHECKPOINT")
    con.close()
    print(f"arrowport: stopped {stopped} listener(s); {args.database} is closed", flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: arrowport serve DB_FILE [--listen HOST:PORT] [--token-file F] [--tls-cert C --tls-key K] [--sql MODE]")
        return 0 if argv else 2
    if argv[0] == "serve":
        return serve(argv[1:])
    if argv[0] == "path":
        from . import extension_path
        print(extension_path())
        return 0
    print(f"arrowport: unknown command {argv[0]!r}; try: arrowport serve DB_FILE --listen HOST:PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
