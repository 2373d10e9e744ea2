#!/usr/bin/env python3
"""Turn a cdylib into a loadable DuckDB extension by appending DuckDB's metadata footer.

DuckDB reads the last bytes of a `.duckdb_extension` file before it dlopens it:

    22 bytes   a WebAssembly custom-section header named "duckdb_signature" (keeps wasm builds valid)
    8 x 32     metadata fields, each ASCII padded with NULs, stored in reverse order:
               unused, unused, unused, abi_type, extension_version, duckdb_version, platform, magic "4"
    256 bytes  signature space (zeros: an unsigned build, loaded with -unsigned / allow_unsigned_extensions)

For ABI type C_STRUCT the "duckdb_version" field holds the C API version the binary needs (e.g. v1.2.0),
which is what lets one binary load in every DuckDB release that offers that stable C API.
"""
import argparse
import os
import sys

FIELD_LEN = 32
SIGNATURE_LEN = 256


def section_header() -> bytes:
    name = b"duckdb_signature"
    # custom section id 0, LEB128 payload length 531 (= 1 + 16 + 2 + 8*32 + 256), name length, name,
    # then LEB128 512: the length of the metadata + signature blob that follows.
    return bytes([0, 0x93, 0x04, len(name)]) + name + bytes([0x80, 0x04])


def field(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > FIELD_LEN:
        sys.exit(f"append_metadata: field {value!r} is longer than {FIELD_LEN} bytes")
    return raw + b"\0" * (FIELD_LEN - len(raw))


def footer(platform: str, duckdb_version: str, extension_version: str, abi_type: str) -> bytes:
    fields = ["", "", "", abi_type, extension_version, duckdb_version, platform, "4"]
    return section_header() + b"".join(field(f) for f in fields) + b"\0" * SIGNATURE_LEN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", required=True, help="the built shared library (.so)")
    p.add_argument("--out", required=True, help="the .duckdb_extension file to write")
    p.add_argument("--platform", default="linux_amd64")
    p.add_argument("--duckdb-version", default="v1.2.0", help="C API version for ABI type C_STRUCT")
    p.add_argument("--extension-version", required=True)
    p.add_argument("--abi-type", default="C_STRUCT")
    a = p.parse_args()

    with open(a.library, "rb") as f:
        body = f.read()
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
        f.write(footer(a.platform, a.duckdb_version, a.extension_version, a.abi_type))
    os.replace(tmp, a.out)
    print(f"wrote {a.out} ({a.platform}, C API {a.duckdb_version}, {a.abi_type}, version {a.extension_version})")


if __name__ == "__main__":
    main()
