"""Debian's libmemcached-tools against the server: memccp files in, memccat them back byte for
byte, memcrm removes, and a short bounded memcslap run exits 0."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

TOOL_TIMEOUT_S = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install libmemcached-tools)")
    return path


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, timeout=TOOL_TIMEOUT_S, **kw)


@pytest.fixture
def files(tmp_path):
    rng = random.Random(5)
    out = {}
    for name, size in [("empty.bin", 0), ("one.bin", 1), ("text.txt", 1000),
                       ("crlf.bin", 3000), ("random.bin", 200_000)]:
        if name == "crlf.bin":
            data = b"line\r\n\x00END\r\n" * (size // 12)
        elif name == "text.txt":
            data = b"".join(b"%d hello\n" % i for i in range(size // 10))
        else:
            data = rng.randbytes(size)
        p = tmp_path / name
        p.write_bytes(data)
        out[name] = p
    return out


def test_memccp_memccat_roundtrip(server, files):
    memccp, memccat, memcrm = _tool("memccp"), _tool("memccat"), _tool("memcrm")
    servers = f"--servers={server.addr}"
    r = _run([memccp, servers, *[str(p) for p in files.values()]])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    for name, p in files.items():
        # memccp stores each file under its basename; memccat (1.1.4) prints each value followed
        # by "\n".
        r = _run([memccat, servers, name])
        assert r.returncode == 0, (name, r.stderr.decode(errors="replace"))
        assert r.stdout == p.read_bytes() + b"\n", name
    # The same bytes through the raw protocol.
    with server.connect() as c:
        assert c.get("random.bin") == files["random.bin"].read_bytes()
    r = _run([memcrm, servers, "text.txt"])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    with server.connect() as c:
        assert c.get("text.txt") is None
        assert c.get("one.bin") == files["one.bin"].read_bytes()


def test_memccat_missing_key_fails(server):
    memccat = _tool("memccat")
    r = _run([memccat, f"--servers={server.addr}", "no-such-key-xyz"])
    assert r.returncode != 0
    assert r.stdout == b""


@pytest.mark.parametrize("test", ["set", "get", "mget"])
def test_memcslap_short_run(server, test):
    memcslap = _tool("memcslap")
    r = _run([memcslap, f"--servers={server.addr}", "--concurrency=4", "--execute-number=1000",
              f"--test={test}"], env={**os.environ, "MEMCACHED_SERVERS": server.addr})
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, out
    assert "failure" not in out.lower(), out
