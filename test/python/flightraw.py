"""A raw Flight DoPut client (grpcio + a hand-written protobuf encoder) for sending what pyarrow never would:
garbage, truncated bodies, changing schemas, odd descriptors."""
import grpc
import pyarrow as pa


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, payload):
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def descriptor(kind=1, path=None, cmd=None):
    out = _varint(1 << 3) + _varint(kind)  # field 1: type (varint)
    if cmd is not None:
        out += _field(2, cmd)
    for p in path or []:
        out += _field(3, p.encode())
    return out


def flight_data(desc=None, header=b"", body=b""):
    out = b""
    if desc is not None:
        out += _field(1, desc)
    if header:
        out += _field(2, header)
    if body:
        out += _field(1000, body)
    return out


def ipc_messages(table):
    """The IPC messages of a table as (header flatbuffer, body) pairs: schema first, then batches."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return stream_messages(sink.getvalue())


def stream_messages(ipc):
    """The messages of IPC stream bytes as (header flatbuffer, body) pairs, as they are (nothing decoded)."""
    reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(ipc))
    out = []
    while True:
        try:
            m = reader.read_next_message()
        except StopIteration:
            break
        if m is None:
            break
        out.append((m.metadata.to_pybytes(), m.body.to_pybytes() if m.body is not None else b""))
    return out


def do_put(addr, messages, timeout=30, authority=None, channel=None):
    """Sends raw FlightData messages; returns the PutResult payloads or raises grpc.RpcError. `authority` sets
    the :authority the listener sees (default: the address); `channel` reuses an open channel instead."""
    if channel is not None:
        return list(_do_put_call(channel)(iter(messages), timeout=timeout))
    options = [("grpc.default_authority", authority)] if authority else None
    with grpc.insecure_channel(addr, options=options) as channel:
        return list(_do_put_call(channel)(iter(messages), timeout=timeout))


def _do_put_call(channel):
    return channel.stream_stream(
        "/arrow.flight.protocol.FlightService/DoPut",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def put_result_metadata(payload):
    """The app_metadata (field 1) of a serialized PutResult."""
    i = 0
    while i < len(payload):
        tag = payload[i]
        i += 1
        length, shift = 0, 0
        while True:
            byte = payload[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if tag == (1 << 3) | 2:
            return payload[i:i + length]
        i += length
    return b""
