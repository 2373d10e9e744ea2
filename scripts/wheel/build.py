"""Builds the Python wheel `arrowport-duckdb` (`make wheel`): the package in scripts/wheel/arrowport_duckdb plus
the built extension, for linux x86_64. No build backend is needed: a wheel is a zip file with three metadata
files, written here directly. The platform tag names the newest glibc symbol version the extension uses."""
import argparse
import base64
import hashlib
import os
import re
import subprocess
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NAME = "arrowport_duckdb"


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def glibc_tag(library):
    """manylinux_2_N_x86_64, N the newest GLIBC_2.N symbol version the library needs."""
    out = subprocess.run(["objdump", "-T", library], capture_output=True, text=True, check=True).stdout
    newest = max((int(m) for m in re.findall(r"GLIBC_2\.(\d+)", out)), default=17)
    return f"manylinux_2_{max(newest, 17)}_x86_64"


def digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--extension", required=True, help="the built arrowport.duckdb_extension")
    p.add_argument("--library", required=True, help="the shared library it was made from (for the glibc tag)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    version = cargo_version()
    tag = f"py3-none-{glibc_tag(args.library)}"
    dist_info = f"{NAME}-{version}.dist-info"
    with open(os.path.join(HERE, NAME, "__init__.py")) as f:
        package_version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
    if package_version != version:
        raise SystemExit(f"{NAME}.__version__ is {package_version}, Cargo.toml says {version}")
    files = {}
    for name in sorted(os.listdir(os.path.join(HERE, NAME))):
        if name.endswith(".py"):
            with open(os.path.join(HERE, NAME, name), "rb") as f:
                files[f"{NAME}/{name}"] = f.read()
    with open(args.extension, "rb") as f:
        files[f"{NAME}/arrowport.duckdb_extension"] = f.read()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        "Name: arrowport-duckdb\n"
        f"Version: {version}\n"
        "Summary: The arrowport DuckDB extension: an in-process landing port for Apache Arrow data (Flight, Flight SQL, REST)\n"
        "License: MIT\n"
        "Requires-Python: >=3.9\n"
        "Requires-Dist: duckdb>=1.5\n"
        "Description-Content-Type: text/plain\n\n"
        "arrowport_duckdb.connect(path) opens a DuckDB database with arrowport loaded; `arrowport serve DB_FILE\n"
        "--listen HOST:PORT` runs a host until SIGTERM.\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: arrowport scripts/wheel/build.py\nRoot-Is-Purelib: false\nTag: {tag}\n"
    ).encode()
    files[f"{dist_info}/entry_points.txt"] = b"[console_scripts]\narrowport = arrowport_duckdb.cli:main\n"
    record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    os.makedirs(args.out, exist_ok=True)
    wheel = os.path.join(args.out, f"{NAME}-{version}-{tag}.whl")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    print(wheel)


if __name__ == "__main__":
    main()
