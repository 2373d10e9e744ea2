"""Client helpers shared by the tests and the bench: Arrow IPC bytes, and a Flight DoPut that returns the
server's acknowledgement (or raises its error)."""
import json

import pyarrow as pa
import pyarrow.flight as fl


def ipc_bytes(table, compression=None, chunk=None):
    """The table as an Arrow IPC stream, optionally with IPC body compression and at most `chunk` rows a batch."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


def flight_put(addr, name, table, compression=None, descriptor=None, chunk=None, client=None, key=None, timeout=None, token=None):
    """One DoPut; returns the PutResult's JSON metadata. Raises pyarrow's error when the server refuses. With
    `client`, the DoPut goes over that open connection (left open); with `key`, under that idempotency key; with
    `token`, presenting it."""
    c = client or fl.connect(f"grpc://{addr}")
    try:
        headers = [(b"idempotency-key", key.encode())] if key else []
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        opts = fl.FlightCallOptions(write_options=pa.ipc.IpcWriteOptions(compression=compression), headers=headers, timeout=timeout)
        w, r = c.do_put(descriptor or fl.FlightDescriptor.for_path(name), table.schema, options=opts)
        w.write_table(table, max_chunksize=chunk)
        w.done_writing()
        buf = r.read()
        w.close()  # raises the server's error when there is no result
        return json.loads(buf.to_pybytes())
    finally:
        if client is None:
            c.close()


def wait_for(check, within=30.0, what="the condition"):
    """Waits until `check()` is true (checked every 20 ms), at most `within` seconds; fails naming `what`."""
    import time
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        time.sleep(0.02)
