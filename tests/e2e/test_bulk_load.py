"""keel only: feature-table versions loaded, switched and rolled back (issue 11), real binaries on
loopback: keel-meta, keel-node, keel-bulk.

Three nodes (each hosting every partition) load a 100,000-key table built from TSV and read every
key from every node; a second version with distinguishable values loads while clients hammer
100-key multi-gets on every node, and no multi-get ever mixes the two; rollback and unrollback;
a load while rolled back and a damaged build are refused with the current version untouched. A
lone node SIGKILLed in the middle of a load, and after a switch, ends with the table entirely one
version. Every wait is a bounded retry on an observable state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST, Conn
from test_placement import placed, wait_balanced  # noqa: F401 (placed is a fixture)

pytestmark = pytest.mark.keel_only

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = REPO_ROOT / "target" / "release"
KEYS = 100_000
# Each slice takes at least two whole segments (16 MiB each in dev.toml) on every node:
# few partitions keep three versions within the 2 GiB data file of the tests.
PARTITIONS = 4


def run(*args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                       timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r


def build(root: Path, name: str, tag: str, keys: int = KEYS) -> Path:
    """A version whose every value names it: `<tag>-<i>`."""
    tsv = root / f"{name}.tsv"
    with open(tsv, "w") as f:
        for i in range(keys):
            f.write(f"u{i}\t{tag}-{i}\n")
    out = root / name
    run("keel-bulk", "build", "--table", "feat", "--input", str(tsv), "--format", "tsv",
        "--out", str(out), "--partitions", str(PARTITIONS))
    tsv.unlink()
    return out


class Unavailable(Exception):
    """A SERVER_ERROR line (a node just restarted, without its routing table yet)."""


def mget(c: Conn, keys: list[int]) -> dict[int, bytes]:
    c.send(b"get " + b" ".join(b"feat:u%d" % k for k in keys) + b"\r\n")
    out = {}
    while True:
        line = c.read_line()
        if line == b"END\r\n":
            return out
        if line.startswith(b"SERVER_ERROR"):
            raise Unavailable(line)
        head = line.split()
        assert head[0] == b"VALUE", line
        out[int(head[1][len(b"feat:u"):])] = c.read_line()[:-2]


def versions_in(got: dict[int, bytes]) -> set[bytes]:
    return {v.split(b"-")[0] for v in got.values()}


def read_all(port: int, tag: bytes, keys: int = KEYS):
    with Conn(port) as c:
        for start in range(0, keys, 100):
            want = list(range(start, min(start + 100, keys)))
            got = mget(c, want)
            assert got == {k: b"%s-%d" % (tag, k) for k in want}, (port, start)


def wait_serving(ports: list[int], tag: bytes, timeout_s: float = 15.0):
    """Until every node answers keys of version `tag` (each node switches when its routing
    table shows the new current version)."""
    deadline = time.monotonic() + timeout_s
    seen: list[set[bytes]] = []
    while time.monotonic() < deadline:
        seen = []
        for p in ports:
            try:
                with Conn(p) as c:
                    got = mget(c, [1, 2, 3])
                seen.append(versions_in(got) if len(got) == 3 else {b"missing"})
            except (Unavailable, OSError):
                seen.append({b"unavailable"})
        if all(s == {tag} for s in seen):
            return
        time.sleep(0.1)
    pytest.fail(f"the nodes do not all serve {tag!r} after {timeout_s} s (saw {seen})")


class Hammer:
    """Threads doing 100-key multi-gets on every port until stopped; records each reply's
    versions."""

    def __init__(self, ports: list[int], keys: int = KEYS):
        self.ports, self.keys = ports, keys
        self.stop = threading.Event()
        self.replies: list[set[bytes]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(p, i)) for i, p in enumerate(ports)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, port: int, seed: int):
        k = seed * 7919
        deadline = time.monotonic() + 120
        try:
            with Conn(port) as c:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    keys = [(k + j * 1009) % self.keys for j in range(100)]
                    k += 1
                    got = mget(c, keys)
                    self.replies.append(versions_in(got) if len(got) == 100 else {b"missing"})
        except Exception as e:  # noqa: BLE001 (reported by the test)
            self.errors.append(f"port {port}: {e!r}")


def test_three_nodes_load_switch_and_roll_back_without_mixing_versions(placed, tmp_path):
    cl = placed()
    for i, zone in ((1, "a"), (2, "b"), (3, "c")):
        cl.add_node(i, zone)
    nodes = cl.live()
    wait_balanced(cl, nodes, replicas={64}, leaders={21, 22})
    ports = [n.port for n in nodes]
    run("keel-meta", "ctl", "--meta", cl.meta, "create-table", "feat", "--partitions",
        str(PARTITIONS), "--mode", "bulk")
    v1, v2 = build(tmp_path, "v1", "one"), build(tmp_path, "v2", "two")

    r = run("keel-bulk", "load", "--meta", cl.meta, "--table", "feat", str(v1))
    assert f"table feat version 1 is current: {KEYS} keys" in r.stdout
    wait_serving(ports, b"one")
    for p in ports:
        read_all(p, b"one")

    with Hammer(ports) as h:
        time.sleep(0.5)
        run("keel-bulk", "load", "--meta", cl.meta, "--table", "feat", str(v2))
        wait_serving(ports, b"two")
        time.sleep(0.5)
    assert not h.errors, h.errors
    assert len(h.replies) > 20
    mixed = [v for v in h.replies if len(v) != 1 or v - {b"one", b"two"}]
    assert not mixed, f"{len(mixed)} of {len(h.replies)} multi-gets mixed versions: {mixed[:3]}"
    assert {b"one"} in h.replies and {b"two"} in h.replies
    read_all(ports[1], b"two")

    # Rollback: every reader is back on version 1, and loads are refused until unrollback.
    with Hammer(ports) as h:
        r = run("keel-bulk", "rollback", "--meta", cl.meta, "--table", "feat")
        assert "reads see version 1" in r.stdout
        wait_serving(ports, b"one")
    assert not h.errors and all(len(v) == 1 for v in h.replies), h.errors
    r = run("keel-bulk", "load", "--meta", cl.meta, "--table", "feat", str(v2), ok=False)
    assert r.returncode == 1 and "rolled back" in r.stderr, r.stderr
    st = json.loads(run("keel-bulk", "status", "--meta", cl.meta, "--json").stdout)
    assert st[0]["current"] == 1 and st[0]["rolled_back"] is True
    assert [v["version"] for v in st[0]["versions"]] == [1, 2]
    run("keel-bulk", "unrollback", "--meta", cl.meta, "--table", "feat")
    r = run("keel-bulk", "rollback", "--meta", cl.meta, "--table", "feat", "--to", "2")
    wait_serving(ports, b"two")
    run("keel-bulk", "unrollback", "--meta", cl.meta, "--table", "feat")

    # A damaged build is refused before anything starts; the current version stays.
    bad = tmp_path / "bad"
    shutil.copytree(build(tmp_path, "v3", "three"), bad)
    seg = bad / "part-00002.seg"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x40
    seg.write_bytes(bytes(data))
    r = run("keel-bulk", "load", "--meta", cl.meta, "--table", "feat", str(bad), ok=False)
    assert r.returncode == 1 and "part-00002.seg: checksum mismatch" in r.stderr, r.stderr
    wait_serving(ports, b"two")
    # A third version: the first falls out of the two kept.
    run("keel-bulk", "load", "--meta", cl.meta, "--table", "feat", str(tmp_path / "v3"))
    wait_serving(ports, b"three")
    st = json.loads(run("keel-bulk", "status", "--meta", cl.meta, "--table", "feat",
                        "--json").stdout)
    assert [v["version"] for v in st[0]["versions"]] == [2, 3]
    r = run("keel-bulk", "rollback", "--meta", cl.meta, "--table", "feat", "--to", "1", ok=False)
    assert "version 1 is not on the nodes (kept: 2, 3)" in r.stderr, r.stderr
    # Writes to the table are refused on every node.
    with Conn(ports[2]) as c:
        assert c.call(b"set feat:u1 0 0 1\r\nx\r\n").startswith(b"CLIENT_ERROR table feat")


def test_a_lone_node_killed_mid_load_and_after_a_switch_serves_one_whole_version(fresh_server, tmp_path):
    s = fresh_server
    meta = f"{HOST}:{s.meta_port}"
    run("keel-meta", "ctl", "--meta", meta, "create-table", "feat", "--partitions",
        str(PARTITIONS), "--mode", "bulk")
    keys = 30_000
    run("keel-bulk", "load", "--meta", meta, "--table", "feat", str(build(tmp_path, "v1", "one", keys)))
    wait_serving([s.port], b"one")
    v2 = build(tmp_path, "v2", "two", keys)
    load = subprocess.Popen([str(BIN / "keel-bulk"), "load", "--meta", meta, "--table", "feat",
                             str(v2), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Killed as soon as the meta service took the load (its version listed), before or while
    # the node adopts it.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = json.loads(run("keel-bulk", "status", "--meta", meta, "--json").stdout)
        if len(st[0]["versions"]) == 2:
            break
        time.sleep(0.005)
    s.kill()
    load.communicate(timeout=60)
    s.start()
    # The node comes back with the load still in the meta service: it adopts, the version
    # switches; at every moment each multi-get is one version.
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with s.connect() as c:
                got = mget(c, list(range(0, keys, keys // 100)))
        except (Unavailable, OSError):
            time.sleep(0.05)
            continue
        seen.append(versions_in(got))
        if seen[-1] == {b"two"}:
            break
        time.sleep(0.05)
    assert all(len(v) == 1 for v in seen), seen
    assert seen[-1] == {b"two"}, seen[-5:]
    read_all(s.port, b"two", keys)
    # Killed after the switch: still version 2, every key.
    s.crash_and_restart()
    wait_serving([s.port], b"two")
    read_all(s.port, b"two", keys)
