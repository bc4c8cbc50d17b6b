"""keel only: adding and removing a replica on a running three-node cluster (processes on loopback).

A fourth node starts with `--join` (no members in any partition), is added as a learner
(`member_add`), catches up from snapshots, is promoted (`member_promote`), and then an original
node is removed (`member_remove`, which moves leadership off it first). Every acknowledged write
must read back from every remaining member, their digests must converge, and the cluster must keep
a majority after the removed node is gone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from conftest import HOST
from test_cluster import (  # noqa: F401
    PARTITIONS,
    ClusterNode,
    _check_all,
    _free_port_pair,
    _items,
    _retry_set,
    _set_many,
    _wait_converged,
    _wait_leaders,
    cluster,
)

pytestmark = pytest.mark.keel_only

ADMIN_TIMEOUT_S = 60.0


class JoiningNode(ClusterNode):
    def command(self) -> list[str]:
        return super().command() + ["--join"]


def _admin(node: ClusterNode, line: bytes) -> bytes:
    with node.connect(timeout_s=30) as c:
        c.send(line + b"\r\n")
        return c.read_line(timeout_s=30)


def _admin_ok(node: ClusterNode, line: bytes) -> None:
    """Sends an admin command until OK: a partition may still be electing or catching up."""
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    reply = b""
    while time.monotonic() < deadline:
        reply = _admin(node, line)
        if reply == b"OK\r\n":
            return
        assert reply.startswith(b"SERVER_ERROR") and b"refused" not in reply, (line, reply)
        time.sleep(0.2)  # back-off between retries of a change that is not ready yet
    raise AssertionError(f"{line!r} never OK, last reply {reply!r}")


def _members(node: ClusterNode) -> dict[int, tuple[int, int]]:
    """node id -> (partitions it votes in, partitions it learns in), as `node` sees them."""
    with node.connect(timeout_s=10) as c:
        c.send(b"members\r\n")
        out = {}
        while True:
            line = c.read_line()
            if line == b"END\r\n":
                return out
            parts = line.split()
            assert parts[0] == b"MEMBER" and parts[3] == b"voter" and parts[5] == b"learner", line
            out[int(parts[1])] = (int(parts[4]), int(parts[6]))


def _wait_members(nodes: list[ClusterNode], want: dict[int, tuple[int, int]]) -> None:
    deadline = time.monotonic() + ADMIN_TIMEOUT_S
    seen = {}
    while time.monotonic() < deadline:
        seen = {n.node_id: _members(n) for n in nodes}
        if all(s == want for s in seen.values()):
            return
        time.sleep(0.1)  # bounded poll of an observable event (the configuration)
    raise AssertionError(f"members never became {want}: {seen}")


def test_add_learner_promote_then_remove_a_node(cluster, _tmp_root):
    acked = _items("before", 300)
    _set_many(cluster[0], acked)

    port4 = _free_port_pair()
    peers4 = cluster[0].peers + f",4={HOST}:{port4}"
    node4 = JoiningNode(Path(tempfile.mkdtemp(prefix="keel-e2e-node4-", dir=_tmp_root)), 4, peers4)
    node4.port = _free_port_pair()
    node4.start()
    try:
        # Not a member of anything yet: it knows no configuration.
        assert _members(node4) == {}
        _admin_ok(cluster[1], b"member_add 4 %s:%d" % (HOST.encode(), port4))
        everyone = [*cluster, node4]
        _wait_members(everyone, {1: (PARTITIONS, 0), 2: (PARTITIONS, 0), 3: (PARTITIONS, 0), 4: (0, PARTITIONS)})
        # A learner gets every write (from snapshots, then the log) but does not vote.
        more = _items("learner", 100)
        _set_many(cluster[2], more)
        acked.update(more)
        _wait_converged(everyone)
        _check_all(node4, acked)
        # It started from an empty log: each partition came as a snapshot.
        with node4.connect() as c:
            assert int(c.stats()["keel_raft_snapshots_installed"]) >= PARTITIONS

        _admin_ok(cluster[2], b"member_promote 4")
        _wait_members(everyone, {n: (PARTITIONS, 0) for n in (1, 2, 3, 4)})

        # Node 1 leads about a third of the partitions: they move before it is removed.
        _admin_ok(node4, b"member_remove 1")
        rest = [cluster[1], cluster[2], node4]
        _wait_members(rest, {n: (PARTITIONS, 0) for n in (2, 3, 4)})
        cluster[0].kill()
        _wait_leaders(rest)
        after = _items("after", 200)
        _set_many(node4, after)
        acked.update(after)
        # Three voters left: one more may fail and the other two still commit.
        cluster[1].kill()
        for k, v in _items("two-of-three", 20).items():
            _retry_set(node4, k, v)
            acked[k] = v
        # Node 2 restarts with its old --peers, which lack node 4: it finds node 4's address in
        # its checkpoint. With node 3 down, nodes 2 and 4 only commit if they reach each other.
        cluster[1].start()
        cluster[2].kill()
        for k, v in _items("two-and-four", 20).items():
            _retry_set(cluster[1], k, v)
            acked[k] = v
        cluster[2].start()
        _wait_converged(rest)
        for n in rest:
            _check_all(n, acked)
    finally:
        node4.stop()


def test_membership_commands_refuse_what_makes_no_sense(cluster):
    # Node 9 was never added; node 2 already votes; a node id of 0 does not exist.
    assert _admin(cluster[0], b"member_promote 9").startswith(b"SERVER_ERROR refused: node 9 is not a learner")
    assert _admin(cluster[0], b"member_add 2 127.0.0.1:1").startswith(b"SERVER_ERROR refused: node 2 is already a voter")
    assert _admin(cluster[0], b"member_add 0 127.0.0.1:1") == b"CLIENT_ERROR bad command line format\r\n"
    assert _admin(cluster[0], b"member_add 4 nowhere") == b"CLIENT_ERROR bad command line format\r\n"
    assert _admin(cluster[0], b"member_remove") == b"ERROR\r\n"
    # Removing a node that is not a member changes nothing.
    assert _admin(cluster[0], b"member_remove 7") == b"OK\r\n"
    assert _members(cluster[2]) == {n: (PARTITIONS, 0) for n in (1, 2, 3)}
    # The cluster still works.
    _set_many(cluster[1], _items("still", 10))


def test_a_lone_node_leaves_its_members_to_its_meta_service(keel_node):
    # Without --peers a node is placed by the meta service it runs inside itself.
    assert _admin(keel_node, b"member_add 2 127.0.0.1:7201").startswith(
        b"SERVER_ERROR the meta service places this node's replicas: use keel-meta ctl"
    )
    # Once placed, its own partitions list it as their only voter.
    deadline = time.monotonic() + 10
    while _members(keel_node) != {1: (PARTITIONS, 0)} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _members(keel_node) == {1: (PARTITIONS, 0)}


def test_a_node_with_another_core_count_is_reported(_tmp_root):
    """Partitions map to shards by the core count, so every node must run the same number of
    cores; a node that does not gets messages for partitions its shards do not own, and says
    so in its log and in `keel_raft_misrouted` instead of silently never electing a leader."""
    ports = [_free_port_pair() for _ in range(2)]
    peers = ",".join(f"{i + 1}={HOST}:{p}" for i, p in enumerate(ports))
    nodes = [
        ClusterNode(Path(tempfile.mkdtemp(prefix=f"keel-e2e-cores{i + 1}-", dir=_tmp_root)), i + 1, peers)
        for i in range(2)
    ]
    one_core = nodes[1].command

    def command() -> list[str]:
        cmd = one_core()
        cmd[cmd.index("--cores") + 1] = "0"
        return cmd

    nodes[1].command = command
    try:
        for n in nodes:
            n.start()
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            with nodes[0].connect() as c:
                if int(c.stats()["keel_raft_misrouted"]) > 0:
                    break
            assert time.monotonic() < deadline, "no misrouted message reported"
            time.sleep(0.1)  # bounded poll of an observable counter
        assert "every node must run the same number of cores" in nodes[0].log_text()
    finally:
        for n in nodes:
            n.stop()
