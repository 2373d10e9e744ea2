"""Packaging metadata stays true: docs/description.yml (the community extensions repository's descriptor) has
the fields that repository requires, names this extension at Cargo.toml's version, and its hello_world runs."""
import os
import re

import yaml

import hosts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def test_the_community_extension_descriptor_is_complete_and_current(db_path):
    with open(os.path.join(ROOT, "docs", "description.yml")) as f:
        d = yaml.safe_load(f)
    ext, repo, docs = d["extension"], d["repo"], d["docs"]
    for field in ["name", "description", "version", "language", "build", "license", "maintainers"]:
        assert ext.get(field), f"extension.{field} is missing"
    assert ext["name"] == "arrowport"
    assert ext["version"] == cargo_version(), (ext["version"], cargo_version())
    assert (ext["language"], ext["build"]) == ("Rust", "cargo")
    assert set(ext["requires_toolchains"].split(";")) >= {"rust", "python3"}
    assert "linux_amd64" not in ext["excluded_platforms"].split(";")
    assert isinstance(ext["maintainers"], list) and all(isinstance(m, str) and m for m in ext["maintainers"])
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", repo["github"]), repo["github"]
    assert re.fullmatch(r"[0-9a-f]{40}", str(repo["ref"])), repo["ref"]
    # The hello_world runs as written (on a free port).
    host = hosts.start("py20", db_path)
    try:
        host.sql(hosts.load_sql())
        statements = [s.strip() for s in re.sub(r"--[^\n]*", "", docs["hello_world"]).split(";") if s.strip()]
        assert statements[0] == "LOAD arrowport"
        for s in statements[1:]:
            host.sql(s.replace("127.0.0.1:8815", "127.0.0.1:0"))
        assert len(host.sql("FROM arrowport_status()")) == 2
        host.sql("SELECT arrowport_stop()")
    finally:
        assert host.close() == 0


def test_the_extension_tooling_targets_configure_release_and_test_release():
    """`make configure release test_release`, as DuckDB's extension-ci-tools run a C-API extension's build."""
    import filecmp
    import subprocess

    def make(*args):
        proc = subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    make("configure", "DUCKDB_PLATFORM=linux_amd64", "EXTENSION_VERSION=v9.9.9")
    with open(os.path.join(ROOT, "configure", "platform.txt")) as f:
        assert f.read().strip() == "linux_amd64"
    with open(os.path.join(ROOT, "configure", "extension_version.txt")) as f:
        assert f.read().strip() == "v9.9.9"
    make("configure")
    with open(os.path.join(ROOT, "configure", "extension_version.txt")) as f:
        assert f.read().strip() == "v" + cargo_version()
    make("release")
    built = os.path.join(ROOT, "build", "release", "arrowport.duckdb_extension")
    collected = os.path.join(ROOT, "build", "release", "extension", "arrowport", "arrowport.duckdb_extension")
    assert filecmp.cmp(built, collected, shallow=False)
    assert "test/run_sql.py" in make("-n", "test_release")
