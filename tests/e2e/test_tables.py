"""keel only: feature tables declared in the meta service (issue 11), on a lone keel-node with its
embedded meta: `keel-meta ctl create-table | tables | drop-table`, and what clients see on the
node for `<table>:<key>`: a bulk table's keys refuse every write naming the table and read as
misses until a version is loaded; an online table's keys are ordinary keys; other keys are
untouched. A table outlives a SIGKILL of the node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HOST, REPO_ROOT

pytestmark = pytest.mark.keel_only

KEEL_META_BIN = Path(os.environ.get("KEEL_META_BIN", REPO_ROOT / "target" / "release" / "keel-meta"))
REFUSED = b"CLIENT_ERROR table feat is bulk-loaded: its keys are written only by keel-bulk load\r\n"


def ctl(server, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    if not KEEL_META_BIN.exists():
        pytest.fail(f"keel-meta binary not found at {KEEL_META_BIN}: run `cargo build --release`")
    r = subprocess.run(
        [str(KEEL_META_BIN), "ctl", "--meta", f"{HOST}:{server.meta_port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if ok:
        assert r.returncode == 0, f"keel-meta ctl {' '.join(args)}: {r.stderr}"
    return r


def wait_reply(server, req: bytes, want: bytes, timeout_s: float = 15.0) -> None:
    """Sends `req` until the node answers `want` (the node learns tables from its routing table,
    renewed on its next heartbeat): bounded."""
    deadline = time.monotonic() + timeout_s
    got = b""
    while time.monotonic() < deadline:
        with server.connect() as c:
            got = c.call(req)
        if got == want:
            return
        time.sleep(0.1)
    pytest.fail(f"{req!r}: still {got!r} after {timeout_s} s, want {want!r}")


def test_a_bulk_table_refuses_client_writes_and_reads_as_empty(fresh_server):
    s = fresh_server
    with s.connect() as c:
        assert c.set("feat:u1", b"before") == b"STORED\r\n"
        assert c.set("plain", b"p") == b"STORED\r\n"
    r = ctl(s, "create-table", "feat", "--partitions", "16", "--mode", "bulk")
    assert r.stdout == "table feat created: 16 partitions, bulk mode, 2 versions kept\n"
    wait_reply(s, b"set feat:u1 0 0 1\r\nx\r\n", REFUSED)
    with s.connect() as c:
        # Every kind of write is refused, noreply too (errors are always written).
        for req in (
            b"set feat:u1 0 0 1 noreply\r\nx\r\n",
            b"add feat:u2 0 0 1\r\nx\r\n",
            b"append feat:u1 0 0 1\r\nx\r\n",
            b"cas feat:u1 0 0 1 5\r\nx\r\n",
            b"delete feat:u1\r\n",
            b"incr feat:n 1\r\n",
            b"touch feat:u1 10\r\n",
            b"ms feat:u1 1\r\nx\r\n",
            b"md feat:u1\r\n",
        ):
            assert c.call(req) == REFUSED, req
        # Reads miss: the table has no version loaded, whatever the keyspace held before.
        assert c.call(b"get feat:u1\r\n") == b"END\r\n"
        assert c.call(b"mg feat:u1 v\r\n") == b"EN\r\n"
        # A multi-get mixing table and other keys answers the others as before.
        assert c.call(b"get plain feat:u1 feat:zz\r\n") == b"VALUE plain 0 1\r\np\r\nEND\r\n"
        assert c.call(b"gat 10 feat:u1\r\n") == REFUSED
        # Keys of no declared table, and a prefix alone, are ordinary keys.
        for k in (b"feature:x", b"feat", b"other:feat:x"):
            assert c.call(b"set " + k + b" 0 0 1\r\nv\r\n") == b"STORED\r\n", k
            assert c.call(b"get " + k + b"\r\n") == b"VALUE " + k + b" 0 1\r\nv\r\nEND\r\n"

    # An online table's keys are written and read like any key.
    ctl(s, "create-table", "live", "--partitions", "8", "--mode", "online", "--versions-kept", "3")
    tables = json.loads(ctl(s, "--json", "tables").stdout)
    assert [(t["def"]["name"], t["def"]["mode"], t["def"]["partitions"], t["def"]["versions_kept"])
            for t in tables] == [
        ("feat", "bulk", 16, 2),
        ("live", "online", 8, 3),
    ]
    text = ctl(s, "tables").stdout.splitlines()
    assert text[0].split() == ["TABLE", "MODE", "PARTITIONS", "REPLICAS", "VERSIONS", "KEPT", "CURRENT"]
    assert text[1].split()[:3] == ["feat", "bulk", "16"]
    with s.connect() as c:
        assert c.set("live:k", b"1") == b"STORED\r\n"
        assert c.get("live:k") == b"1"

    # The table outlives a SIGKILL of the node (the meta service's data file holds it).
    s.crash_and_restart()
    wait_reply(s, b"set feat:u1 0 0 1\r\nx\r\n", REFUSED)
    assert [t["def"]["name"] for t in json.loads(ctl(s, "--json", "tables").stdout)] == ["feat", "live"]

    # Dropped, its keys are ordinary keys again.
    assert ctl(s, "drop-table", "feat").stdout == "table feat dropped\n"
    wait_reply(s, b"set feat:u1 0 0 1\r\ny\r\n", b"STORED\r\n")


def test_bad_table_definitions_are_refused_by_name(fresh_server):
    s = fresh_server
    ctl(s, "create-table", "feat", "--partitions", "16", "--mode", "bulk")
    for args, why in [
        (("create-table", "feat", "--partitions", "32", "--mode", "bulk"), "table feat already exists"),
        (("create-table", "t2", "--partitions", "12", "--mode", "bulk"), "partitions 12: must be a power of two"),
        (("create-table", "t2", "--partitions", "8", "--mode", "bulk", "--versions-kept", "0"), "versions kept 0"),
        (("create-table", "t2", "--partitions", "8", "--mode", "bulk", "--replicas", "2"), "the keyspace's replication factor"),
        (("create-table", "a:b", "--partitions", "8", "--mode", "bulk"), "table name \"a:b\""),
        (("create-table", "t2", "--partitions", "8", "--mode", "sideways"), "bulk or online"),
        (("drop-table", "nope"), "no table \"nope\""),
    ]:
        r = ctl(s, *args, ok=False)
        assert r.returncode != 0, args
        assert why in r.stderr, (args, r.stderr)
    # A retried create of the same definition succeeds and changes nothing.
    ctl(s, "create-table", "feat", "--partitions", "16", "--mode", "bulk")
    assert len(json.loads(ctl(s, "--json", "tables").stdout)) == 1
