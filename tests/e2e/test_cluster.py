"""keel only: three keel-node processes on loopback replicating every partition with Raft.

Scenarios (issue 2): write through any node and read from any node; SIGKILL a node, the others
elect new leaders for its partitions and keep serving; restart it and it catches up; pause a node
(SIGSTOP: it stops answering, like a partition) and resume it. After each scenario every write
that was acknowledged reads back from every node, and all replicas converge to the same state:
the `keel_digest` stat (a hash of every item's key, CAS, flags, expiry and length in the node's
own engine, not forwarded) is equal on the three nodes. The CAS comes from the Raft index that
wrote the item, so equal digests mean equal data. Two tests guard bugs of the wait for a leader
that the fault-injecting network found (a pipeline sent to a node that just started failed with
"no leader"; flush_all without a majority never answered).

Every wait is a bounded retry on an observable event (a reply, equal digests), never a sleep
standing in for one.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HOST, IS_KEEL, KEEL_PROFILE, Server, port_block

pytestmark = pytest.mark.keel_only

SHARDS = 2
PARTITIONS = 64  # node.partitions in hw-configs/dev.toml
CONVERGE_TIMEOUT_S = 30.0


def _free_port_pair() -> int:
    """A base port p with p .. p+SHARDS-1 free and reserved (shard s of a node takes peer port
    p+s); see conftest.port_block."""
    return port_block(SHARDS)


class ClusterNode(Server):
    def __init__(self, workdir: Path, node_id: int, peers: str, raft_overrides: dict | None = None):
        super().__init__("keel", workdir)
        # The client port too, for the same reason as the peer ports.
        self.port = _free_port_pair()
        self.node_id = node_id
        self.peers = peers
        self.profile = KEEL_PROFILE
        if raft_overrides:
            # dev.toml with some [raft] keys changed (each key appears once in the file).
            text = KEEL_PROFILE.read_text()
            for k, v in raft_overrides.items():
                text = re.sub(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
            self.profile = workdir / "profile.toml"
            self.profile.write_text(text)

    def command(self) -> list[str]:
        return super().command() + ["--node-id", str(self.node_id), "--peers", self.peers]

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


def _peer_ports() -> dict[int, int]:
    """Node id -> the peer port of its shard 0, for nodes 1, 2 and 3."""
    return {i: _free_port_pair() for i in (1, 2, 3)}


def _new_cluster(
    tmp_root: Path, raft_overrides: dict | None = None, peers: dict[int, str] | None = None
) -> list[ClusterNode]:
    """Three nodes, not started. `peers` gives each node's --peers (default: every node at its
    own peer port, the same list for all)."""
    if peers is None:
        direct = ",".join(f"{i}={HOST}:{p}" for i, p in _peer_ports().items())
        peers = {i: direct for i in (1, 2, 3)}
    nodes = []
    for i in (1, 2, 3):
        wd = Path(tempfile.mkdtemp(prefix=f"keel-e2e-node{i}-", dir=tmp_root))
        nodes.append(ClusterNode(wd, i, peers[i], raft_overrides))
    return nodes


def _start_nodes(nodes: list[ClusterNode]) -> None:
    """Starts every node and waits until every partition has a leader."""
    for n in nodes:
        n.start()
    _wait_leaders(nodes)


def _start_cluster(tmp_root: Path, raft_overrides: dict | None = None) -> list[ClusterNode]:
    nodes = _new_cluster(tmp_root, raft_overrides)
    _start_nodes(nodes)
    return nodes


def _stop_cluster(nodes: list[ClusterNode]) -> None:
    for n in nodes:
        if n.running():
            n.resume()
        n.stop()
        shutil.rmtree(n.workdir, ignore_errors=True)


@pytest.fixture
def cluster(_tmp_root):
    if not IS_KEEL:
        pytest.skip("keel only")
    nodes = _start_cluster(_tmp_root)
    yield nodes
    _stop_cluster(nodes)


@pytest.fixture
def compacting_cluster(_tmp_root):
    """Checkpoints every 100 ms and keeps only 5 entries for lagging peers: a node that misses
    a few dozen writes per partition can only catch up from snapshots. A snapshot stream waits
    whenever 1 MiB is queued for its peer (one chunk), so multi-chunk snapshots are paced."""
    if not IS_KEEL:
        pytest.skip("keel only")
    nodes = _start_cluster(
        _tmp_root,
        {"checkpoint_interval_ms": 100, "compact_lag_entries": 5, "snapshot_inflight_bytes": 1 << 20},
    )
    yield nodes
    _stop_cluster(nodes)


def _wait_leaders(nodes: list[Server]) -> None:
    """Until every partition has a leader: the nodes' `keel_raft_leading` add up to 64."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    leading = 0
    while time.monotonic() < deadline:
        leading = 0
        for n in nodes:
            with n.connect(timeout_s=10) as c:
                leading += int(c.stats()["keel_raft_leading"])
        if leading == PARTITIONS:
            return
        time.sleep(0.1)  # bounded poll of an observable event (leaders elected)
    raise AssertionError(f"only {leading} of {PARTITIONS} partitions have a leader")


def _retry_set(node: Server, key: bytes, value: bytes, timeout_s: float = CONVERGE_TIMEOUT_S) -> None:
    """Sets until STORED: while an election runs the node answers SERVER_ERROR (no leader)."""
    deadline = time.monotonic() + timeout_s
    last = b""
    while time.monotonic() < deadline:
        try:
            with node.connect(timeout_s=10) as c:
                last = c.set(key, value)
        except (OSError, TimeoutError, EOFError) as e:
            last = repr(e).encode()
        if last == b"STORED\r\n":
            return
        assert last.startswith(b"SERVER_ERROR") or b"Error" in last, (key, last)
        time.sleep(0.1)  # back-off between retries of a refused write
    raise AssertionError(f"set {key!r} never STORED, last reply {last!r}")


def _set_many(node: Server, items: dict[bytes, bytes]) -> None:
    """Pipelined sets through `node`; every reply must be STORED (the cluster is healthy)."""
    with node.connect(timeout_s=30) as c:
        c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items.items()))
        for k in items:
            line = c.read_line(timeout_s=30)
            assert line == b"STORED\r\n", (node.node_id, k, line)


def _check_all(node: Server, items: dict[bytes, bytes]) -> None:
    with node.connect(timeout_s=30) as c:
        for k, v in items.items():
            assert c.get(k) == v, (node.node_id, k)


def _digest(node: Server) -> str:
    with node.connect(timeout_s=10) as c:
        return c.stats()["keel_digest"]


def _wait_converged(nodes: list[Server]) -> str:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        seen = [_digest(n) for n in nodes]
        if len(set(seen)) == 1:
            return seen[0]
        time.sleep(0.1)  # bounded poll of an observable event (the digests)
    raise AssertionError(f"replicas did not converge: digests {seen}")


def _items(tag: str, n: int) -> dict[bytes, bytes]:
    return {b"%s-%d" % (tag.encode(), i): b"%s-value-%d-" % (tag.encode(), i) * (1 + i % 7) for i in range(n)}


def test_write_through_any_node_read_from_any(cluster):
    for i, node in enumerate(cluster):
        _set_many(node, _items(f"via{i}", 200))
    everything = {}
    for i in range(3):
        everything.update(_items(f"via{i}", 200))
    for node in cluster:
        _check_all(node, everything)
    digest = _wait_converged(cluster)
    assert digest != "0"
    # Read-modify-writes are decided by the leader and replicated as entries: every replica
    # applies them to the same state.
    with cluster[1].connect() as c:
        assert c.set(b"counter", b"10") == b"STORED\r\n"
        c.send(b"incr counter 5\r\n")
        assert c.read_line() == b"15\r\n"
        c.send(b"append counter 0 0 1\r\nx\r\n")
        assert c.read_line() == b"STORED\r\n"
    for node in cluster:
        with node.connect() as c:
            assert c.get(b"counter") == b"15x"
    _wait_converged(cluster)


def test_killed_node_others_serve_then_it_catches_up(cluster):
    before = _items("before", 300)
    _set_many(cluster[0], before)
    cluster[0].kill()
    # The two others are a majority: partitions the dead node led elect a new leader.
    during = _items("during", 300)
    _retry_set(cluster[1], b"first-after-kill", b"x")
    _wait_leaders(cluster[1:])
    _set_many(cluster[1], during)
    _check_all(cluster[2], {**before, **during})
    cluster[0].start()
    # It catches up from the leaders' logs and serves everything.
    digest = _wait_converged(cluster)
    assert digest != "0"
    _check_all(cluster[0], {**before, **during})


def test_paused_node_resumes_and_converges(cluster):
    _set_many(cluster[2], _items("a", 100))
    cluster[2].pause()
    try:
        b = _items("b", 200)
        _retry_set(cluster[0], b"first-after-pause", b"x")
        # Until the paused node's partitions have new leaders, writes to them time out (the
        # outcome is unknown to the client, which gets SERVER_ERROR).
        _wait_leaders(cluster[:2])
        _set_many(cluster[0], b)
        _check_all(cluster[1], b)
    finally:
        cluster[2].resume()
    _wait_converged(cluster)
    _check_all(cluster[2], {**_items("a", 100), **_items("b", 200)})


def test_sigkill_every_node_keeps_acknowledged_writes(cluster):
    acked = _items("durable", 300)
    _set_many(cluster[1], acked)
    for n in cluster:
        n.kill()
    for n in cluster:
        n.start()
    for k, v in list(acked.items())[:3]:
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            with cluster[0].connect() as c:
                c.send(b"get %s\r\n" % k)
                line = c.read_line()
                if not line.startswith(b"SERVER_ERROR"):
                    c.buf = line + c.buf
                    break
            assert time.monotonic() < deadline, "no leader after a full restart"
            time.sleep(0.1)  # back-off while the groups elect leaders
    for node in cluster:
        _check_all(node, acked)
    _wait_converged(cluster)


def _stat(node: Server, name: str) -> int:
    with node.connect(timeout_s=10) as c:
        return int(c.stats()[name])


def test_node_behind_the_compacted_log_catches_up_from_snapshots(compacting_cluster):
    """Raft section 7: a follower missing entries the leader has compacted gets a snapshot. The
    partition's state is streamed in chunks and installed at once; afterwards the node serves
    every acknowledged write and its digest equals the others'."""
    c = compacting_cluster
    before = _items("pre", 200)
    _set_many(c[0], before)
    c[2].kill()
    _retry_set(c[0], b"first-after-kill", b"x")
    _wait_leaders(c[:2])
    during = _items("missed", 3000)  # ~47 entries per partition, far past the 5 kept
    # 60 MiB of large values: many partitions' snapshots take several 1 MiB chunks.
    during.update({b"big-%d" % i: bytes([65 + i % 26]) * (600 << 10) for i in range(100)})
    _set_many(c[0], during)
    # Leaders compact at their next checkpoint (one is taken when state changed): wait for one
    # on each live node that starts after the writes.
    starts = [_stat(n, "keel_raft_checkpoints") for n in c[:2]]
    _set_many(c[0], _items("nudge", 64))
    for n, start in zip(c[:2], starts):
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while _stat(n, "keel_raft_checkpoints") <= start:
            assert time.monotonic() < deadline, "no checkpoint after the writes"
            time.sleep(0.05)  # bounded poll of an observable counter
    c[2].start()
    _wait_converged(c)
    assert _stat(c[2], "keel_raft_snapshots_installed") > 0, "caught up without a snapshot?"
    sent = sum(_stat(n, "keel_raft_snapshots_sent") for n in c[:2])
    assert sent > 0
    assert sum(_stat(n, "keel_raft_snapshot_pauses") for n in c[:2]) > 0, "no snapshot was paced"
    _check_all(c[2], {**before, **during})
    # It keeps replicating normally after the install.
    after = _items("after", 100)
    _set_many(c[2], after)
    _wait_converged(c)
    _check_all(c[1], after)


def test_clean_stop_hands_leadership_over_first(cluster):
    """SIGTERM: the node transfers the leadership of its partitions to up-to-date followers
    (Raft thesis 3.10) before it checkpoints and exits, so the others lead every partition at
    once: writes succeed right away instead of failing until an election timeout passes."""
    _set_many(cluster[0], _items("pre-stop", 100))
    assert _stat(cluster[0], "keel_raft_leading") > 0
    cluster[0].stop()
    assert cluster[0].proc.returncode == 0, cluster[0].log_text()
    leading = sum(_stat(n, "keel_raft_leading") for n in cluster[1:])
    assert leading == PARTITIONS, f"only {leading} partitions have a leader right after the stop"
    after = _items("post-stop", 300)
    _set_many(cluster[1], after)
    _check_all(cluster[2], after)
    cluster[0].start()
    _wait_converged(cluster)


def test_restarted_node_answers_a_pipeline_once_it_knows_the_leaders(cluster):
    """Found with the fault-injecting network (test_cluster_faults.py). A node that has just
    started knows no leader yet, so each request of a pipeline parsed then waits for one
    (replica/mod.rs `wait_for_leader`, deadline request_timeout_ms from the parse). The wait
    sleeps a tick (100 ms) before it first looks, and the connection polls the requests in order,
    so the k-th request looks no earlier than k ticks after the parse: past the 50th, requests
    fail with "no leader for this key's partition" although every partition has had a leader for
    seconds. After a clean stop the other two lead every partition at once, so no request here
    has a reason to fail."""
    items = _items("pipelined", 200)
    _set_many(cluster[1], items)
    cluster[0].stop()
    cluster[0].start()
    with cluster[0].connect(timeout_s=30) as c:
        c.send(b"".join(b"get %s\r\nmn\r\n" % k for k in items))
        replies = [c.read_until(b"MN\r\n", timeout_s=30) for _ in items]
    failed = [r for r in replies if r.startswith(b"SERVER_ERROR")]
    assert not failed, f"{len(failed)} of {len(items)} gets failed, e.g. {failed[0]!r}"
    _check_all(cluster[0], items)


def test_flush_all_without_a_majority_answers_within_the_request_timeout(cluster):
    """Found while checking the wait for a leader (replica/mod.rs `wait_for_leader`). A request
    for a partition with no leader retries each tick, until request_timeout_ms (5 s) from when it
    began. For flush_all, which goes to every partition, the retry resubmits the whole flush_all
    (`submit_hops` of an op without a key), whose partitions without a leader wait again with a
    deadline of their own: the client gets no answer for as long as the majority is down, and
    when it is back the pile of retries proposes the flush again and again (190 890 proposals
    after 30 s without a majority, in one run)."""
    _set_many(cluster[0], _items("flushed", 50))
    cluster[1].kill()
    cluster[2].kill()
    # With check_quorum the lone node steps down once it has not heard from a majority for an
    # election timeout; from then on no partition has a leader.
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while _stat(cluster[0], "keel_raft_leading") > 0:
        assert time.monotonic() < deadline, "the lone node still leads"
        time.sleep(0.1)  # bounded poll of an observable counter
    with cluster[0].connect() as c:
        c.send(b"flush_all\r\n")
        # request_timeout_ms, plus room for a busy machine.
        reply = c.read_line(timeout_s=12)
    assert reply.startswith(b"SERVER_ERROR"), reply
