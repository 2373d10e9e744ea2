"""Deterministic test data: the original service's benchmark table shape."""
import pyarrow as pa


def events(n, start=0):
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "timestamp": pa.array(range(n), pa.int64()),
        "value": pa.array([i * 0.25 for i in range(n)], pa.float64()),
        "category": pa.array([["a", "b", "c", "d"][i % 4] for i in range(n)]),
        "metric": pa.array([float(i % 7) for i in range(n)], pa.float64()),
    })
