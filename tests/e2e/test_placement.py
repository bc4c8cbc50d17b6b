"""keel only: keel-node placed by keel-meta (issue 8): real binaries on loopback.

One keel-meta (replication factor 3, 64 partitions) and four keel-node processes in two zones:
every partition gets three replicas spanning both zones, each node hosts 48 +- 1 and leads
16 +- 1, and a write through any node reads back from any node. A fifth node joins while a
loader writes and reads through the others: replicas move until each node hosts 38 or 39, no
request fails, no acknowledged write is lost and every partition's replicas hold the same items
(`stats partitions` digests). A node is then drained and stopped with the same checks. A meta
service of three replicas loses its leader and keeps placing. A node restarted after SIGKILL
keeps its replicas; one that lost its data file gets them back from the leaders' snapshots.
Refusals: an id held by a live node, another partition count; the data port's member_*
commands. Failures (issue 9), each under load with nothing acknowledged lost: five nodes lose one
(its replicas rebuilt on the four others, leaders within 1 of their share; back, it is filled
again), then a whole zone at once; two of three nodes lost (no majority: nothing changes until
one returns); a node cut off from the meta service only (not declared dead); a loop device that
starts failing writes (the node says so and is Down at once; needs root and losetup, else
skipped). KEEL_E2E_KEEP=1 keeps the processes' directories (logs) for a look afterwards.

What each node hosts is read from the node itself (`stats partitions`), not from the meta
service's view. Every wait is a bounded retry on an observable state.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST, IS_KEEL, REPO_ROOT, Conn, Server, port_block

pytestmark = pytest.mark.keel_only

KEEL_META_BIN = Path(os.environ.get("KEEL_META_BIN", REPO_ROOT / "target" / "release" / "keel-meta"))
SHARDS = 2
PARTITIONS = 64
RF = 3
BALANCE_TIMEOUT_S = 120.0


class MetaReplica:
    """One keel-meta process this test started."""

    def __init__(self, workdir: Path, port: int, replica_id: int = 1, peers: str | None = None,
                 failure_timeout: str = "10s"):
        self.failure_timeout = failure_timeout
        self.workdir = workdir
        self.port = port
        self.replica_id = replica_id
        self.peers = peers
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"meta{replica_id}.log"

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self):
        cmd = [
            str(KEEL_META_BIN),
            "--listen",
            self.addr,
            "--data",
            str(self.workdir / f"meta{self.replica_id}.data"),
            "--partitions",
            str(PARTITIONS),
            "--replicas",
            str(RF),
            "--heartbeat-interval-ms",
            "300",
            "--failure-timeout",
            self.failure_timeout,
        ]
        if self.peers:
            cmd += ["--id", str(self.replica_id), "--peers", self.peers]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class PlacedNode(Server):
    """A keel-node placed by the meta service at `meta`, or (`meta` None) by the one it runs
    inside itself, at `self.meta_addr`."""

    def __init__(self, workdir: Path, node_id: int, zone: str, meta: str | None):
        super().__init__("keel", workdir)
        self.node_id = node_id
        self.zone = zone
        self.meta = meta

    @property
    def meta_addr(self) -> str:
        return self.meta or f"{HOST}:{self.meta_port}"

    def command(self) -> list[str]:
        cmd = super().command() + ["--node-id", str(self.node_id), "--zone", self.zone]
        if self.meta:
            cmd += ["--meta", self.meta]
        return cmd

    def partitions(self) -> dict[int, dict[str, str]]:
        """`stats partitions`: partition -> {role, term, applied, keys, digest}."""
        with self.connect() as c:
            c.send(b"stats partitions\r\n")
            text = c.read_until(b"END\r\n").decode()
        out: dict[int, dict[str, str]] = {}
        for line in text.splitlines():
            if line.startswith("STAT "):
                _, name, value = line.split(" ", 2)
                p, field = name.split(":")
                out.setdefault(int(p), {})[field] = value
        return out


def ctl(meta: str, *args: str) -> str:
    r = subprocess.run(
        [str(KEEL_META_BIN), "ctl", "--meta", meta, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"keel-meta ctl {' '.join(args)}: {r.stderr}"
    return r.stdout


def status(meta: str) -> dict:
    return json.loads(ctl(meta, "status", "--json"))


class Cluster:
    def __init__(self, root: Path, meta_replicas: int = 1, failure_timeout: str = "10s"):
        if not KEEL_META_BIN.exists():
            pytest.fail(f"keel-meta binary not found at {KEEL_META_BIN}: run `cargo build --release`")
        self.root = Path(tempfile.mkdtemp(prefix="keel-e2e-placement-", dir=root))
        ports = [port_block(1) for _ in range(meta_replicas)]
        peers = None
        if meta_replicas > 1:
            peers = ",".join(f"{i + 1}={HOST}:{p}" for i, p in enumerate(ports))
        self.metas = [MetaReplica(self.root, p, i + 1, peers, failure_timeout)
                      for i, p in enumerate(ports)]
        self.meta = ",".join(m.addr for m in self.metas)
        self.nodes: dict[int, PlacedNode] = {}
        for m in self.metas:
            m.start()

    def add_node(self, node_id: int, zone: str, start: bool = True) -> PlacedNode:
        wd = Path(tempfile.mkdtemp(prefix=f"node{node_id}-", dir=self.root))
        n = PlacedNode(wd, node_id, zone, self.meta)
        self.nodes.setdefault(node_id, n)
        if start:
            n.start()
        return n

    def live(self) -> list[PlacedNode]:
        return [n for n in self.nodes.values() if n.running()]

    def close(self):
        for n in self.nodes.values():
            n.stop()
        for m in self.metas:
            m.stop()
        if os.environ.get("KEEL_E2E_KEEP"):
            print(f"kept {self.root}")
            return
        shutil.rmtree(self.root, ignore_errors=True)


def hosted(nodes: list[PlacedNode]) -> dict[int, dict[int, dict[str, str]]]:
    return {n.node_id: n.partitions() for n in nodes}


def wait_balanced(cluster: Cluster, nodes: list[PlacedNode], replicas: set[int], leaders: set[int]):
    """Until the meta service has no move in flight and every node in `nodes` hosts a count in
    `replicas` and leads one in `leaders` (as the nodes report), every partition has RF voters
    that agree on one leader. Returns what the nodes host."""
    deadline = time.monotonic() + BALANCE_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            st = status(cluster.meta)
        except AssertionError as e:  # a meta election: ctl retries, then says so
            last = str(e)
            time.sleep(0.5)
            continue
        h = hosted(nodes)
        counts = {i: len(ps) for i, ps in h.items()}
        leads = {i: sum(1 for r in ps.values() if r["role"] == "leader") for i, ps in h.items()}
        per_partition: dict[int, list[int]] = {}
        for i, ps in h.items():
            for p in ps:
                per_partition.setdefault(p, []).append(i)
        full = len(per_partition) == PARTITIONS and all(len(v) == RF for v in per_partition.values())
        last = f"moves {len(st['moves_in_flight'])}, hosts {counts}, leads {leads}"
        if (
            not st["moves_in_flight"]
            and full
            and set(counts.values()) <= replicas
            and set(leads.values()) <= leaders
            and sum(leads.values()) == PARTITIONS
        ):
            return h
        time.sleep(0.5)
    try:
        last += "\n" + ctl(cluster.meta, "status")
    except AssertionError as e:
        last += f"\n{e}"
    pytest.fail(f"not balanced within {BALANCE_TIMEOUT_S}s: {last}")


def wait_digests_equal(nodes: list[PlacedNode]):
    """Until every partition's replicas (as the nodes report them) have equal digests."""
    deadline = time.monotonic() + 60
    differing = None
    while time.monotonic() < deadline:
        h = hosted(nodes)
        by_p: dict[int, set[str]] = {}
        for ps in h.values():
            for p, r in ps.items():
                by_p.setdefault(p, set()).add(r["digest"])
        differing = sorted(p for p, ds in by_p.items() if len(ds) > 1)
        if not differing:
            return
        time.sleep(0.3)
    pytest.fail(f"partitions whose replicas differ: {differing}")


def assert_zones_spanned(cluster: Cluster, h: dict[int, dict[int, dict[str, str]]]):
    zones: dict[int, set[str]] = {}
    for i, ps in h.items():
        for p in ps:
            zones.setdefault(p, set()).add(cluster.nodes[i].zone)
    one_zone = sorted(p for p, z in zones.items() if len(z) < 2)
    assert not one_zone, f"partitions with every replica in one zone: {one_zone}"


class Loader:
    """Writes and reads through the given nodes on its own thread until stopped; an error
    reply is recorded as a failure, a read that misses an acknowledged value as lost."""

    def __init__(self, nodes: list[PlacedNode], keys: int = 2000):
        self.ports = [n.port for n in nodes]
        self.keys = keys
        self.acked: dict[bytes, bytes] = {}
        # Error replies (allowed while a node dies), and reads that missed an acknowledged
        # value (never allowed).
        self.failures: list[str] = []
        self.lost: list[str] = []

        self.ops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self):
        conns = [Conn(p) for p in self.ports]
        i = 0
        try:
            # Bounded: at most an hour of requests even if never stopped.
            while not self._stop.is_set() and i < 10_000_000:
                port = self.ports[i % len(conns)]
                c = conns[i % len(conns)]
                k = b"pl%d" % (i * 7919 % self.keys)
                i += 1
                if i % 2:
                    v = b"v%d" % i
                    r = c.call(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v))
                    if r == b"STORED\r\n":
                        self.acked[k] = v
                    else:
                        self.failures.append(f"set {k!r} through :{port}: {r!r}")
                else:
                    c.send(b"get %s\r\n" % k)
                    r = c.read_line()
                    if r.startswith(b"SERVER_ERROR "):
                        # A read forwarded to a leader that just died: an error, not a loss.
                        self.failures.append(f"get {k!r} through :{port}: {r!r}")
                        self.ops += 1
                        continue
                    if r != b"END\r\n":
                        r += c.read_until(b"END\r\n")
                    want = self.acked.get(k)
                    if want is not None and b"\r\n%s\r\n" % want not in r:
                        self.lost.append(f"get {k!r} through :{port}: {r!r}, want {want!r}")
                self.ops += 1
        except Exception as e:  # a dead loader must fail the test, not end it quietly
            self.failures.append(f"loader stopped: {e!r}")
        finally:
            for c in conns:
                c.close()

    def check_all(self, nodes: list[PlacedNode]):
        """Every acknowledged write reads back, its latest value, through every node."""
        for n in nodes:
            with n.connect() as c:
                for k, v in self.acked.items():
                    c.send(b"get %s\r\n" % k)
                    r = c.read_until(b"END\r\n")
                    assert r == b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(v), v), (n.node_id, k, r)


class Reader:
    """On one thread per node: pipelined batches of gets of keys `<prefix>0..count-1` (written
    before), which cover every partition, until stopped; records the slowest batch and every
    error reply. A batch in flight when a leader dies has reads forwarded to it."""

    def __init__(self, nodes: list[PlacedNode], prefix: bytes, count: int):
        self.ports = [n.port for n in nodes]
        self.request = b"".join(b"get %s%d\r\n" % (prefix, k) for k in range(count))
        self.count = count
        self.slowest = 0.0
        self.batches = 0
        self.errors: list[bytes] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in self.ports]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, port: int):
        try:
            with Conn(port) as c:
                for _ in range(100_000):  # bounded; stopped long before
                    if self._stop.is_set():
                        return
                    t0 = time.monotonic()
                    c.send(self.request)
                    done = 0
                    while done < self.count:
                        line = c.read_line()
                        if line.startswith(b"VALUE "):
                            c.read_line()
                            assert c.read_line() == b"END\r\n"
                            done += 1
                        elif line.startswith(b"SERVER_ERROR "):
                            self.errors.append(line)
                            done += 1
                        # A lone END follows an error reply.
                    self.slowest = max(self.slowest, time.monotonic() - t0)
                    self.batches += 1
        except Exception as e:  # a dead reader must fail the test, not end it quietly
            self.errors.append(repr(e).encode())


@pytest.fixture
def placed(_tmp_root):
    if not IS_KEEL:
        pytest.skip("keel only")
    clusters: list[Cluster] = []
    yield lambda **kw: clusters.append(Cluster(_tmp_root, **kw)) or clusters[-1]
    for c in clusters:
        c.close()


def test_four_nodes_balance_a_fifth_joins_under_load_and_a_drained_node_leaves(placed):
    cl = placed()
    for i, zone in ((1, "a"), (2, "a"), (3, "b"), (4, "b")):
        cl.add_node(i, zone)
    four = cl.live()
    h = wait_balanced(cl, four, replicas={47, 48, 49}, leaders={15, 16, 17})
    assert_zones_spanned(cl, h)
    # Writes through any node read back from any node.
    for i, n in enumerate(four):
        with n.connect() as c:
            for k in range(50):
                assert c.set(b"w%d-%d" % (i, k), b"x%d" % k) == b"STORED\r\n"
    for n in four:
        with n.connect() as c:
            for i in range(len(four)):
                for k in range(50):
                    assert c.get(b"w%d-%d" % (i, k)) == b"x%d" % k

    with Loader(four) as load:
        cl.add_node(5, "b")
        five = cl.live()
        h = wait_balanced(cl, five, replicas={38, 39}, leaders={12, 13, 14})
    assert not load.failures and not load.lost, (load.failures[:5], load.lost[:5])
    assert load.ops > 100 and load.acked
    assert_zones_spanned(cl, h)
    load.check_all(five)
    wait_digests_equal(five)

    # From zone b, which keeps two nodes: with two in each zone left, each hosts 48 again.
    drained = cl.nodes[4]
    rest = [n for n in five if n is not drained]
    with Loader(rest) as load:
        ctl(cl.meta, "drain", "4")
        h = wait_balanced(cl, rest, replicas={47, 48, 49}, leaders={15, 16, 17})
        # Its last replicas are dropped at its next heartbeats.
        deadline = time.monotonic() + 30
        while drained.partitions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert drained.partitions() == {}, "the drained node still hosts replicas"
        with drained.connect() as c:
            assert c.stats()["curr_items"] == "0", "a drained node keeps no items"
    drained.stop()
    assert not load.failures and not load.lost, (load.failures[:5], load.lost[:5])
    assert_zones_spanned(cl, h)
    load.check_all(rest)
    wait_digests_equal(rest)


def three_balanced_nodes(placed, prefix: bytes, keys: int) -> tuple[Cluster, list[PlacedNode]]:
    """Three nodes in three zones, each hosting every partition, with `keys` keys
    `<prefix><k>` = `<k>` written through node 1."""
    cl = placed()
    for i, zone in ((1, "a"), (2, "b"), (3, "c")):
        cl.add_node(i, zone)
    nodes = cl.live()
    wait_balanced(cl, nodes, replicas={64}, leaders={21, 22})
    with nodes[0].connect() as c:
        for k in range(keys):
            assert c.set(b"%s%d" % (prefix, k), b"%d" % k) == b"STORED\r\n"
    return cl, nodes


def test_a_restarted_node_keeps_its_replicas_and_leads_its_share_again(placed):
    cl, nodes = three_balanced_nodes(placed, b"r", 200)
    nodes[0].crash_and_restart()
    h = wait_balanced(cl, nodes, replicas={64}, leaders={21, 22})
    assert h[1].keys() == set(range(PARTITIONS))
    for n in nodes:
        with n.connect() as c:
            for k in range(200):
                assert c.get(b"r%d" % k) == b"%d" % k
    wait_digests_equal(nodes)


def test_a_three_replica_meta_service_loses_its_leader_and_keeps_placing(placed):
    cl = placed(meta_replicas=3)
    for i, zone in ((1, "a"), (2, "b"), (3, "c")):
        cl.add_node(i, zone)
    wait_balanced(cl, cl.live(), replicas={64}, leaders={21, 22})
    st = status(cl.meta)
    leader = next(r for r in st["meta_replicas"] if r["leader"])
    victim = next(m for m in cl.metas if m.replica_id == leader["id"])
    victim.kill()
    # A fourth node joins after the meta leader is gone: the other two place onto it (in a zone
    # of its own, so that each node ends with 48).
    cl.add_node(4, "d")
    h = wait_balanced(cl, cl.live(), replicas={48}, leaders={16})
    assert h[4], "the new node got no replicas"
    wait_digests_equal(cl.live())


def _refused(n: PlacedNode, profile: Path | None = None) -> str:
    """Runs `n` to its end (a refused node stops by itself) and returns its output."""
    cmd = n.command()
    if profile is not None:
        cmd[cmd.index("--profile") + 1] = str(profile)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stderr
    return r.stderr


def test_a_node_id_held_by_a_live_node_and_another_partition_count_are_refused(placed):
    cl = placed()
    cl.add_node(1, "a")
    # add_node returns once the data port answers, which can be before the node has registered:
    # the twin must come second, or it is the one that holds the id.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = [n for n in status(cl.meta)["nodes"] if n["id"] == 1]
        if held and held[0]["health"] == "Up" and held[0]["last_heartbeat_ms"] is not None:
            break
        time.sleep(0.1)
    assert held and held[0]["health"] == "Up", held
    # Its own data file and ports: only the id is the same as the running node's.
    twin = cl.add_node(1, "b", start=False)
    err = _refused(twin)
    assert "refused this node" in err and "node id 1 is taken" in err, err

    odd = cl.add_node(7, "a", start=False)
    profile = odd.workdir / "profile.toml"
    text = (REPO_ROOT / "hw-configs" / "dev.toml").read_text()
    profile.write_text(text.replace("partitions = 64", "partitions = 32", 1))
    err = _refused(odd, profile)
    assert "refused this node" in err and "32" in err and "64" in err, err


def test_the_data_port_refuses_membership_changes_when_the_meta_service_places(placed):
    cl = placed()
    n = cl.add_node(1, "a")
    with n.connect() as c:
        r = c.call(b"member_remove 1\r\n")
    assert r.startswith(b"SERVER_ERROR") and b"keel-meta ctl" in r, r


def test_a_node_that_lost_its_data_file_gets_its_replicas_back_from_the_leaders(placed):
    # A replaced disk: the node restarts under its id with an empty data file. The routing table
    # still places its replicas there; it creates them empty and each catches up from its
    # leader's snapshot (writes meanwhile keep flowing through the other two, a majority).
    cl, nodes = three_balanced_nodes(placed, b"d", 300)
    lost = nodes[2]
    lost.kill()
    lost.data_path.unlink()
    lost.start()
    deadline = time.monotonic() + 60
    while len(lost.partitions()) < PARTITIONS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lost.partitions()) == PARTITIONS, "the routing table's replicas were not created"
    # (A write in the moment its leader died may time out: that is a crash, not a planned move.
    # Once every partition has a leader again, every write succeeds.)
    deadline = time.monotonic() + 60
    while status(cl.meta)["leaderless"] and time.monotonic() < deadline:
        time.sleep(0.2)
    # Writes to every partition after the restart: each leader then finds the replica behind.
    with nodes[0].connect() as c:
        for k in range(300, 600):
            assert c.set(b"d%d" % k, b"%d" % k) == b"STORED\r\n"
    wait_digests_equal(nodes)
    assert lost.running(), "the node stopped"
    with lost.connect() as c:
        for k in range(600):
            assert c.get(b"d%d" % k) == b"%d" % k


def test_a_lone_node_runs_its_own_meta_service_and_a_second_node_joins_it(_tmp_root):
    # Without --meta and --peers a node is a complete system: it places the keyspace on itself
    # through the meta service it runs. A second node joins at that meta service's address
    # while a loader writes and reads through the first: the keyspace (replication factor 3)
    # grows to a replica on each, leaders split between them, nothing fails, nothing is lost.
    if not IS_KEEL:
        pytest.skip("keel only")
    root = Path(tempfile.mkdtemp(prefix="keel-e2e-lone-", dir=_tmp_root))
    lone = PlacedNode(root / "lone", 1, "a", None)
    second = PlacedNode(root / "second", 2, "b", lone.meta_addr)
    for n in (lone, second):
        n.workdir.mkdir()
    try:
        lone.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = status(lone.meta_addr)
            if st["nodes"] and st["nodes"][0]["leaders"] == PARTITIONS:
                break
            time.sleep(0.05)
        assert len(lone.partitions()) == PARTITIONS
        assert [(n["id"], n["replicas"]) for n in st["nodes"]] == [(1, PARTITIONS)], st
        assert st["replication_factor"] == RF and st["under_replicated"] == PARTITIONS, st
        with lone.connect() as c:
            for k in range(200):
                assert c.set(b"lone%d" % k, b"%d" % k) == b"STORED\r\n"
        with Loader([lone]) as load:
            second.start()
            deadline = time.monotonic() + BALANCE_TIMEOUT_S
            while time.monotonic() < deadline:
                st = status(lone.meta_addr)
                leads = sorted(n["leaders"] for n in st["nodes"])
                if (not st["moves_in_flight"] and st["under_replicated"] == PARTITIONS
                        and [n["replicas"] for n in st["nodes"]] == [PARTITIONS, PARTITIONS]
                        and leads[1] - leads[0] <= 2 and sum(leads) == PARTITIONS):
                    break
                time.sleep(0.3)
            else:
                pytest.fail(f"the second node did not get its replicas and leaders: {st}")
            time.sleep(1)  # the loader goes on through the balanced pair
        assert not load.failures and not load.lost, (load.failures[:5], load.lost[:5])
        assert load.ops > 100, load.ops
        wait_digests_equal([lone, second])
        load.check_all([lone, second])
        with second.connect() as c:
            for k in range(200):
                assert c.get(b"lone%d" % k) == b"%d" % k
        # SIGKILL the node with the meta service: its placement survives (the meta service's
        # state is in its own Raft log), and both nodes serve again.
        epoch = st["epoch"]
        lone.crash_and_restart()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st = status(lone.meta_addr)
            except AssertionError:
                continue
            if st["leaderless"] == 0 and all(n["health"] == "Up" for n in st["nodes"]):
                break
            time.sleep(0.2)
        assert st["epoch"] >= epoch and [n["replicas"] for n in st["nodes"]] == [PARTITIONS] * 2, st
        for n in (lone, second):
            with n.connect() as c:
                for k in range(0, 200, 7):
                    assert c.get(b"lone%d" % k) == b"%d" % k
    finally:
        for n in (second, lone):
            n.stop()


def test_a_lone_node_survives_losing_its_meta_data_file_or_its_data_file(_tmp_root):
    # The embedded meta service's file lost: the new meta service adopts the groups the node
    # reports (they are the only copies) and drops none. The data file lost instead: the
    # placement still puts every partition on this node, which starts each again empty.
    if not IS_KEEL:
        pytest.skip("keel only")
    root = Path(tempfile.mkdtemp(prefix="keel-e2e-lone-lost-", dir=_tmp_root))
    node = PlacedNode(root, 1, "a", None)
    meta_file = node.data_path.with_name(node.data_path.name + ".meta")

    def placed_and_led():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = status(node.meta_addr)
            if (st["nodes"] and st["nodes"][0]["replicas"] == PARTITIONS
                    and st["nodes"][0]["leaders"] == PARTITIONS and not st["moves_in_flight"]):
                return
            time.sleep(0.1)
        pytest.fail(f"not every partition placed on and led by the node: {st}")

    try:
        node.start()
        placed_and_led()
        with node.connect() as c:
            for k in range(300):
                assert c.set(b"keep%d" % k, b"%d" % k) == b"STORED\r\n"
        node.kill()
        assert meta_file.exists()
        meta_file.unlink()
        node.start()
        placed_and_led()
        assert "replica dropped" not in node.log_text()
        with node.connect() as c:
            for k in range(300):
                assert c.get(b"keep%d" % k) == b"%d" % k, k

        node.kill()
        node.data_path.unlink()
        node.start()
        placed_and_led()
        with node.connect() as c:
            assert c.get(b"keep1") is None
            for k in range(300):  # every partition takes writes again
                assert c.set(b"new%d" % k, b"%d" % k) == b"STORED\r\n"
        assert "starts again empty" in node.log_text()
    finally:
        node.stop()


def leader_shares(h: dict[int, dict[int, dict[str, str]]]) -> dict[int, tuple[int, float]]:
    """Each node's leaders and its share of them: leaders * its voters / all voters."""
    votes = {i: sum(1 for r in ps.values() if r["role"] != "learner") for i, ps in h.items()}
    total = sum(votes.values()) or 1
    return {
        i: (sum(1 for r in ps.values() if r["role"] == "leader"), PARTITIONS * votes[i] / total)
        for i, ps in h.items()
    }


def wait_repaired(cl: Cluster, live: list[PlacedNode], replicas: dict[int, set[int]]) -> dict:
    """Until every partition has RF replicas on `live` (each node hosting a count in its set of
    `replicas`), the meta service has nothing under-replicated nor in flight, and every node
    leads within 1 of its share. Returns what the nodes host."""
    deadline = time.monotonic() + BALANCE_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            st = status(cl.meta)
        except AssertionError as e:
            last = str(e)
            time.sleep(0.5)
            continue
        h = hosted(live)
        per_partition: dict[int, int] = {}
        for ps in h.values():
            for p in ps:
                per_partition[p] = per_partition.get(p, 0) + 1
        shares = leader_shares(h)
        last = f"status {st['under_replicated']} under-replicated, moves {len(st['moves_in_flight'])}; " \
               f"hosts { {i: len(ps) for i, ps in h.items()} }, leaders/share {shares}"
        if (
            st["under_replicated"] == 0
            and not st["moves_in_flight"]
            and len(per_partition) == PARTITIONS
            and all(c == RF for c in per_partition.values())
            and all(len(h[i]) in want for i, want in replicas.items())
            and sum(lead for lead, _ in shares.values()) == PARTITIONS
            and all(abs(lead - share) <= 1 for lead, share in shares.values())
        ):
            return h
        time.sleep(0.5)
    pytest.fail(f"not repaired within {BALANCE_TIMEOUT_S}s: {last}\n{ctl(cl.meta, 'status')}")


def write_keys(n: PlacedNode, prefix: bytes, count: int):
    with n.connect() as c:
        for k in range(count):
            assert c.set(b"%s%d" % (prefix, k), b"%d" % k) == b"STORED\r\n"


def assert_keys(nodes: list[PlacedNode], prefix: bytes, count: int, step: int = 7):
    for n in nodes:
        with n.connect() as c:
            for k in range(0, count, step):
                assert c.get(b"%s%d" % (prefix, k)) == b"%d" % k, (n.node_id, k)


def assert_loader_lost_nothing(load: Loader, live: list[PlacedNode]):
    # A write in flight to a partition a dead node led may have failed (a crash); none that
    # was acknowledged may be lost.
    assert load.ops > 100, load.ops
    assert not load.lost, load.lost[:3]
    assert all("loader stopped" not in f for f in load.failures), load.failures[:3]
    wait_digests_equal(live)
    load.check_all(live)


# Five nodes in zones a, a, b, b, c at replication factor 3: each partition has one replica in
# every zone, so node 5 (zone c's only node) hosts all 64 and the others 32 each.
FIVE = ((1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"))
FIVE_HOSTS = {1: {32}, 2: {32}, 3: {32}, 4: {32}, 5: {64}}


def test_a_killed_node_is_rebuilt_elsewhere_under_load_comes_back_and_a_lost_zone_too(placed):
    # One meta, five nodes, a loader writing and reading throughout. SIGKILL node 3: within
    # twice the failure timeout plus the copying every partition has three replicas on the four
    # live nodes (learner, snapshot, promote, the dead voter removed), leaders within 1 of their
    # share, nothing acknowledged lost, digests equal. Restarted, it drops its stale replicas
    # and placement fills it again. Then both zone-a nodes die at once: every partition loses
    # one replica and is rebuilt on the three left.
    cl = placed(failure_timeout="3s")
    for i, zone in FIVE:
        cl.add_node(i, zone)
    wait_repaired(cl, cl.live(), FIVE_HOSTS)
    write_keys(cl.nodes[1], b"rep", 300)
    victim = cl.nodes[3]
    live = [n for n in cl.live() if n is not victim]
    with Loader(live) as load, Reader(live, b"rep", 300) as reads:
        time.sleep(1)
        victim.kill()
        killed = time.monotonic()
        # Zone b keeps node 4 alone: it takes every partition's zone-b replica.
        h = wait_repaired(cl, live, {1: {32}, 2: {32}, 4: {64}, 5: {64}})
        repaired_s = time.monotonic() - killed
        st = status(cl.meta)
        time.sleep(1)
    health = {n["id"]: n["health"] for n in st["nodes"]}
    assert health == {1: "Up", 2: "Up", 3: "Down", 4: "Up", 5: "Up"}, health
    assert {n["id"]: n["replicas"] for n in st["nodes"]}[3] == 0, st
    assert st["repairs_in_flight"] == 0 and st["without_majority"] == 0, st
    assert_zones_spanned(cl, h)
    assert_loader_lost_nothing(load, live)
    assert_keys(live, b"rep", 300)
    # A read in flight to a leader on the dead node is sent again to the new leader once one
    # is known (an election, then a routing table): none fails, none waits out the 5 s
    # request timeout.
    assert reads.batches > 20 and not reads.errors, (reads.batches, reads.errors[:5])
    assert reads.slowest < 4.5, reads.slowest
    print(f"repaired {PARTITIONS} partitions {repaired_s:.1f} s after the kill (failure timeout 3 s); "
          f"slowest batch of 300 gets {reads.slowest:.2f} s")
    assert repaired_s < 2 * 3 + 60, repaired_s

    victim.start()
    wait_repaired(cl, cl.live(), FIVE_HOSTS)
    assert "replica dropped" in victim.log_text()
    wait_digests_equal(cl.live())
    assert_keys([victim], b"rep", 300)

    lost = [cl.nodes[1], cl.nodes[2]]
    live = [cl.nodes[i] for i in (3, 4, 5)]
    with Loader(live) as load:
        time.sleep(1)
        for n in lost:
            n.kill()
        wait_repaired(cl, live, {3: {64}, 4: {64}, 5: {64}})
    assert_loader_lost_nothing(load, live)
    assert_keys(live, b"rep", 300)


def test_partitions_that_lost_their_majority_wait_for_a_node_and_lose_nothing(placed):
    # Three nodes, each hosting every partition; two die at once. No partition has a majority:
    # the meta service says so and changes nothing (a membership change needs a majority),
    # writes fail with an error, nothing acknowledged is lost. One node back: writes go on, and
    # the second restores three replicas.
    cl, nodes = three_balanced_nodes(placed, b"maj", 200)
    for n in nodes[1:]:
        n.kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = status(cl.meta)
        if st["without_majority"] == PARTITIONS and st["nodes_up"] == 1:
            break
        time.sleep(0.3)
    assert st["without_majority"] == PARTITIONS and st["nodes_up"] == 1, st
    assert not st["moves_in_flight"], st["moves_in_flight"]
    table = ctl(cl.meta, "status")
    assert "only 1 nodes up for replication factor 3" in table, table
    assert f"{PARTITIONS} under-replicated ({PARTITIONS} without a majority)" in table, table
    with nodes[0].connect() as c:
        r = c.call(b"set maj-new 0 0 1\r\nx\r\n")
    assert r.startswith(b"SERVER_ERROR "), r
    nodes[1].start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = status(cl.meta)
        if st["without_majority"] == 0 and st["leaderless"] == 0:
            break
        time.sleep(0.3)
    assert st["without_majority"] == 0 and st["nodes_up"] == 2, st
    assert "only 2 nodes up" in ctl(cl.meta, "status")
    write_keys(nodes[0], b"maj-after", 50)
    nodes[2].start()
    wait_balanced(cl, nodes, replicas={64}, leaders={21, 22})
    assert_keys(nodes, b"maj", 200)
    assert_keys(nodes, b"maj-after", 50, step=1)
    wait_digests_equal(nodes)


class Relay:
    """A TCP relay to `target` that the test can cut: while cut, every connection through it
    is closed, and new ones are closed as they arrive."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.addr = f"{HOST}:{self.sock.getsockname()[1]}"
        self.cut_off = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:  # ends when close() closes the listener
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=2)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        try:
            while True:  # ends when either side closes
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.cut_off.set()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()

    def heal(self):
        self.cut_off.clear()

    def close(self):
        self.sock.close()
        self.cut()


def test_a_node_cut_off_from_the_meta_service_only_is_not_declared_dead(placed):
    # Node 4 reaches the meta service through a relay; the relay is cut for four failure
    # timeouts while the node still talks to its peers. Its peers' heartbeats say they hear it:
    # it stays Up, nothing is rebuilt, it keeps its replicas and serves. Healed, its heartbeats
    # are answered again.
    cl = placed(failure_timeout="3s")
    relay = Relay(cl.meta)
    try:
        for i, zone in ((1, "a"), (2, "a"), (3, "b")):
            cl.add_node(i, zone)
        n4 = cl.add_node(4, "b", start=False)
        n4.meta = relay.addr
        n4.start()
        nodes = cl.live()
        wait_balanced(cl, nodes, replicas={47, 48, 49}, leaders={15, 16, 17})
        with Loader(nodes) as load:
            relay.cut()
            time.sleep(12)
            st = status(cl.meta)
            table = ctl(cl.meta, "status")
            hosts = len(n4.partitions())
            relay.heal()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                node4 = next(n for n in status(cl.meta)["nodes"] if n["id"] == 4)
                if node4["last_heartbeat_ms"] is not None and node4["last_heartbeat_ms"] < 2000:
                    break
                time.sleep(0.3)
            assert node4["last_heartbeat_ms"] < 2000, node4
        cut = next(n for n in st["nodes"] if n["id"] == 4)
        assert cut["health"] == "Up", cut
        assert cut["last_heartbeat_ms"] >= 9000 and cut["peers_heard_ms"] < 3000, cut
        assert st["under_replicated"] == 0 and not st["moves_in_flight"], st
        assert "ms ago; peers " in table, table
        assert hosts in (47, 48, 49), hosts
        assert not load.failures and not load.lost, (load.failures[:5], load.lost[:5])
        load.check_all(nodes)
        assert "heartbeat failed" in n4.log_text()
    finally:
        relay.close()


@pytest.fixture
def failing_disk(_tmp_root):
    """A block device that fails for real once told to: a loop device over a sparse 2 GiB
    file on a 96 MiB ext4 filesystem (itself loop-mounted under the test's directory). Once
    the filesystem is filled (`fill(dir)`), a write into a hole of the file fails and the loop
    device answers it with an I/O error, as a dying disk would. Yields (device, dir)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("needs root, mkfs.ext4 and losetup for a loop device")
    root = Path(tempfile.mkdtemp(prefix="keel-e2e-disk-", dir=_tmp_root))
    image, mnt = root / "fs.img", root / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot loop-mount a filesystem here: {r.stderr.strip()}")
    backing = mnt / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(2 << 30)
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    dev = r.stdout.strip()
    try:
        if r.returncode != 0 or not dev:
            pytest.skip(f"cannot attach a loop device here: {r.stderr.strip()}")
        yield Path(dev), mnt
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fill(directory: Path) -> int:
    """Writes a file into `directory` until its filesystem has no block left; returns bytes."""
    written = 0
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):
            block = b"\0" * chunk
            for _ in range(1 << 16):  # bounded: 64 GiB in 1 MiB pieces
                try:
                    written += f.write(block)
                except OSError:
                    break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return written


def test_a_node_whose_device_fails_says_so_and_is_rebuilt_elsewhere_at_once(placed, failing_disk):
    # Node 4's device is a loop device that starts failing writes (an I/O error through
    # io_uring, as from a dying disk): its logs are poisoned, and it tells the meta service
    # before it stops. The meta service marks it Down at once (the
    # failure timeout is 60 s here, so its silence would take a minute), says why in ctl
    # status, and rebuilds its replicas on the three others; nothing acknowledged is lost.
    cl = placed(failure_timeout="60s")
    for i, zone in ((1, "a"), (2, "a"), (3, "b")):
        cl.add_node(i, zone)
    n4 = cl.add_node(4, "b", start=False)
    disk, disk_fs = failing_disk
    n4.data_path = disk
    n4.start()
    wait_balanced(cl, cl.live(), replicas={47, 48, 49}, leaders={15, 16, 17})
    live = [cl.nodes[i] for i in (1, 2, 3)]
    write_keys(live[0], b"dev", 200)
    with Loader(live) as load:
        time.sleep(0.5)
        filled = fill(disk_fs)
        failed = time.monotonic()
        deadline = failed + 30
        while time.monotonic() < deadline:
            node4 = next(n for n in status(cl.meta)["nodes"] if n["id"] == 4)
            if node4["health"] == "Down":
                break
            time.sleep(0.2)
        down_s = time.monotonic() - failed
        assert node4["health"] == "Down", (node4, n4.log_text())
        assert node4["failure"] and "shard" in node4["failure"], node4
        table = ctl(cl.meta, "status")
        n4.proc.wait(timeout=30)
        wait_balanced(cl, live, replicas={64}, leaders={21, 22})
        repaired_s = time.monotonic() - failed
    assert n4.proc.returncode == 1
    assert "device failures:\n  node 4: shard " in table, table
    log = n4.log_text()
    assert "device failure" in log and "the meta service knows" in log, log
    assert_loader_lost_nothing(load, live)
    assert_keys(live, b"dev", 200)
    print(f"filled {filled} bytes; node 4 Down {down_s:.1f} s later, repaired after {repaired_s:.1f} s")
    assert down_s < 15, down_s
