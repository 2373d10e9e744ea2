"""Type fidelity: each Arrow type, nulls included, landed through Flight and through REST, must come out of
DuckDB with the column type and values DuckDB itself gives the same Arrow data in-process (the oracle: the
same DuckDB version scanning the pyarrow table). Values compare as DuckDB renders them (`::VARCHAR`), so no
Python conversion stands between the two. float16 and decimal256, which DuckDB's scan refuses, are widened /
narrowed instead."""
import datetime
import decimal
import json
import uuid

import httpx
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import hosts
from clients import flight_put
from clients import ipc_bytes as ipc

ARROW = "application/vnd.apache.arrow.stream"
UTC = datetime.timezone.utc


def column(values, typ):
    return pa.array(values, typ)


# name -> Arrow array of 3 values, one NULL.
COLUMNS = {
    "i8": column([-128, None, 127], pa.int8()),
    "i16": column([-32768, None, 32767], pa.int16()),
    "i32": column([-2**31, None, 2**31 - 1], pa.int32()),
    "i64": column([-2**63, None, 2**63 - 1], pa.int64()),
    "u8": column([0, None, 255], pa.uint8()),
    "u16": column([0, None, 65535], pa.uint16()),
    "u32": column([0, None, 2**32 - 1], pa.uint32()),
    "u64": column([0, None, 2**64 - 1], pa.uint64()),
    "f32": column([1.5, None, -3.25], pa.float32()),
    "f64": column([1e300, None, -0.0], pa.float64()),
    "dec128": column([decimal.Decimal("12345678.90"), None, decimal.Decimal("-0.01")], pa.decimal128(10, 2)),
    "dec128_38": column([decimal.Decimal("9" * 36 + ".99"), None, decimal.Decimal("1")], pa.decimal128(38, 2)),
    "bool": column([True, None, False], pa.bool_()),
    "utf8": column(["a", None, "ü ✓"], pa.string()),
    "large_utf8": column(["a", None, "long " * 10], pa.large_string()),
    "utf8_view": column(["short", None, "a string longer than twelve bytes"], pa.string_view()),
    "binary": column([b"\x00\x01", None, b""], pa.binary()),
    "large_binary": column([b"\xff", None, b"abc"], pa.large_binary()),
    "binary_view": column([b"x", None, b"a binary longer than twelve bytes"], pa.binary_view()),
    "fixed_binary": column([b"abc", None, b"xyz"], pa.binary(3)),
    "date32": column([datetime.date(2024, 2, 29), None, datetime.date(1970, 1, 1)], pa.date32()),
    "date64": column([datetime.date(2024, 2, 29), None, datetime.date(1969, 12, 31)], pa.date64()),
    "time32_s": column([datetime.time(1, 2, 3), None, datetime.time(23, 59, 59)], pa.time32("s")),
    "time32_ms": column([datetime.time(1, 2, 3, 4000), None, datetime.time(0, 0)], pa.time32("ms")),
    "time64_us": column([datetime.time(1, 2, 3, 4), None, datetime.time(0, 0)], pa.time64("us")),
    "time64_ns": column([3_723_000_000_001, None, 0], pa.time64("ns")),
    "ts_s": column([1_700_000_000, None, 0], pa.timestamp("s")),
    "ts_ms": column([1_700_000_000_123, None, 0], pa.timestamp("ms")),
    "ts_us": column([1_700_000_000_123_456, None, 0], pa.timestamp("us")),
    "ts_ns": column([1_700_000_000_123_456_789, None, 0], pa.timestamp("ns")),
    "ts_s_tz": column([1_700_000_000, None, 0], pa.timestamp("s", tz="UTC")),
    "ts_ms_tz": column([1_700_000_000_123, None, 0], pa.timestamp("ms", tz="Europe/Oslo")),
    "ts_us_tz": column([1_700_000_000_123_456, None, 0], pa.timestamp("us", tz="UTC")),
    "ts_ns_tz": column([1_700_000_000_123_456_789, None, 0], pa.timestamp("ns", tz="America/New_York")),
    "dur_s": column([3600, None, -1], pa.duration("s")),
    "dur_ms": column([1500, None, 0], pa.duration("ms")),
    "dur_us": column([1, None, 10**9], pa.duration("us")),
    "dur_ns": column([1000, None, 5], pa.duration("ns")),
    "interval": column([pa.MonthDayNano([1, 2, 3000]), None, pa.MonthDayNano([-1, 0, 0])], pa.month_day_nano_interval()),
    "dict": pa.array(["red", None, "blue"]).dictionary_encode(),
    "list": column([[1, 2], None, []], pa.list_(pa.int32())),
    "large_list": column([["a"], None, ["b", None]], pa.large_list(pa.string())),
    "fixed_list": column([[1, 2], None, [3, 4]], pa.list_(pa.int64(), 2)),
    "struct": column([{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}], pa.struct([("a", pa.int32()), ("b", pa.string())])),
    "map": column([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
    "null": pa.nulls(3),
    "uuid": pa.ExtensionArray.from_storage(pa.uuid(), column([uuid.UUID(int=1).bytes, None, uuid.UUID(int=2**128 - 1).bytes], pa.binary(16))),
}

# DuckDB's own scan refuses these; arrowport stores them losslessly.
BEYOND = {
    "f16": (pa.array([1.5, None, -2.0], pa.float32()).cast(pa.float16()), "FLOAT", [1.5, None, -2.0]),
    "dec256": (column([decimal.Decimal("123.45"), None, decimal.Decimal("-" + "9" * 36 + ".99")], pa.decimal256(40, 2)),
               "DECIMAL(38,2)", ["123.45", None, "-" + "9" * 36 + ".99"]),
}


def send(addr, protocol, name, table):
    if protocol == "rest":
        r = httpx.post(f"http://{addr}/streams/{name}", content=ipc(table), headers={"Content-Type": ARROW}, timeout=60)
        return r.status_code, (r.text if r.status_code == 200 else r.json()["error"]["message"])
    try:
        return 200, json.dumps(flight_put(addr, name, table))
    except pa.ArrowException as e:
        return 400, str(e)


@pytest.fixture(params=["py20", "py15"])
def pair(request, tmp_path):
    """A host with arrowport listening, and an oracle of the same DuckDB version."""
    host = hosts.start(request.param, str(tmp_path / "types.duckdb"))
    oracle = hosts.start(request.param, ":memory:")
    host.sql(hosts.load_sql())
    addr = host.sql("SELECT arrowport_listen('127.0.0.1:0')")[0][0]
    yield host, oracle, addr
    host.sql("SELECT arrowport_stop()")
    assert host.close() == 0
    oracle.close()


@pytest.mark.parametrize("protocol", ["flight", "rest"])
def test_every_type_lands_as_duckdb_scans_it(pair, protocol):
    host, oracle, addr = pair
    mismatches = []
    for name, array in COLUMNS.items():
        table = pa.table({name: array})
        try:
            oracle.register("t_" + name, ipc(table))
            want_type = oracle.sql(f'SELECT column_type FROM (DESCRIBE SELECT * FROM "t_{name}")')
            want_rows = oracle.sql(f'SELECT "{name}"::VARCHAR FROM "t_{name}"')
        except hosts.HostError as e:
            want_type, want_rows = None, str(e)
        status, text = send(addr, protocol, f"{protocol}_{name}", table)
        if want_type is None:
            # Every type here is one DuckDB scans in-process; an oracle refusal means the test data is wrong.
            mismatches.append((name, "the oracle refused it", want_rows[:200]))
            continue
        if status != 200:
            mismatches.append((name, "refused", text[:300]))
            continue
        got_type = host.sql(f'SELECT column_type FROM (DESCRIBE "{protocol}_{name}")')
        got_rows = host.sql(f'SELECT "{name}"::VARCHAR FROM "{protocol}_{name}"')
        if got_type != want_type or got_rows != want_rows:
            mismatches.append((name, got_type, want_type, got_rows, want_rows))
    assert mismatches == []


@pytest.mark.parametrize("protocol", ["flight", "rest"])
def test_half_floats_and_wide_decimals_go_beyond_duckdbs_scan(pair, protocol):
    host, _, addr = pair
    for name, (array, sql_type, values) in BEYOND.items():
        status, text = send(addr, protocol, f"{protocol}_{name}", pa.table({name: array}))
        assert status == 200, text
        assert host.sql(f'SELECT column_type FROM (DESCRIBE "{protocol}_{name}")') == [(sql_type,)]
        got = [v for (v,) in host.sql(f'SELECT "{name}"::VARCHAR FROM "{protocol}_{name}"')]
        assert got == [None if v is None else str(v) for v in values]


@pytest.mark.parametrize("protocol", ["flight", "rest"])
def test_a_wide_decimal_out_of_range_is_a_clear_error(pair, protocol):
    host, _, addr = pair
    big = pa.array([decimal.Decimal("1" + "0" * 39)], pa.decimal256(41, 0))
    status, text = send(addr, protocol, f"{protocol}_toobig", pa.table({"amount": big}))
    assert status != 200
    assert 'column "amount" (Decimal256(41, 0)) does not fit DuckDB\'s Decimal128(38, 0)' in text
    assert host.sql(f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{protocol}_toobig'") == [(0,)]
