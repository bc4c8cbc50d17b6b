"""The fault-injecting proxy (faultnet.py) on its own, between a fake sending node and a fake
receiving node (plain sockets speaking the peer transport's framing), so the cluster tests can
trust what it does and what it counts. No keel-node here: these run against either target.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from faultnet import CLEAN, HELLO_BYTES, FaultNet, Plan, decide
from test_cluster import _free_port_pair

HOST = "127.0.0.1"
TIMEOUT_S = 5.0


def _hello(from_node: int, from_shard: int, to_node: int, to_shard: int) -> bytes:
    """The transport's hello (wire.rs): magic, version 1, reserved, then the four ids."""
    return (
        b"KEEL"
        + (1).to_bytes(2, "little")
        + bytes(2)
        + from_node.to_bytes(8, "little")
        + from_shard.to_bytes(4, "little")
        + to_node.to_bytes(8, "little")
        + to_shard.to_bytes(4, "little")
    )


def _frame(payload: bytes) -> bytes:
    # The proxy never looks at the CRC, so a zero one will do here.
    return len(payload).to_bytes(4, "little") + bytes(4) + payload


def _read_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))  # the socket's timeout bounds each read
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def _read_frame(s: socket.socket) -> bytes:
    header = _read_exact(s, 8)
    return _read_exact(s, int.from_bytes(header[:4], "little"))


class Link:
    """Node 1 shard 0 -> proxy -> node 2 shard 0, with fake nodes on both ends."""

    def __init__(self, seed: int = 1):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port2 = _free_port_pair()
        self.listener.bind((HOST, port2))
        self.listener.listen(8)
        self.listener.settimeout(TIMEOUT_S)
        self.net = FaultNet(seed, {1: _free_port_pair(), 2: port2}, 2, _free_port_pair)
        proxy = (HOST, self.net.proxy_ports[(1, 2)])
        self.sender = socket.create_connection(proxy, timeout=TIMEOUT_S)
        self.sender.sendall(_hello(1, 0, 2, 0))
        self.receiver, _ = self.listener.accept()
        self.receiver.settimeout(TIMEOUT_S)
        assert _read_exact(self.receiver, HELLO_BYTES) == _hello(1, 0, 2, 0)

    def send(self, *payloads: bytes) -> None:
        self.sender.sendall(b"".join(_frame(p) for p in payloads))

    def receive(self, n: int) -> list[bytes]:
        return [_read_frame(self.receiver) for _ in range(n)]

    def wait_counted(self, field: str, n: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while getattr(self.net.counters()[(1, 2)], field) < n:
            assert time.monotonic() < deadline, self.net.summary()
            time.sleep(0.01)  # bounded poll of the proxy's counter

    def close(self) -> None:
        self.net.stop()
        for s in (self.sender, self.receiver, self.listener):
            s.close()


@pytest.fixture
def link():
    ln = Link()
    yield ln
    ln.close()


def test_clean_link_passes_every_frame_in_order(link):
    payloads = [b"p%d" % i * (i + 1) for i in range(50)] + [b"", b"x" * 300_000]
    link.send(*payloads)
    assert link.receive(len(payloads)) == payloads
    c = link.net.counters()[(1, 2)]
    assert (c.passed, c.faults(), c.connections) == (len(payloads), 0, 1)


def test_dropped_and_cut_frames_never_arrive(link):
    link.net.set_plan(1, 2, Plan(drop=1.0))
    link.send(b"a", b"b", b"c")
    link.wait_counted("dropped", 3)
    link.net.set_plan(1, 2, CLEAN)
    link.net.partition(1, 2)
    link.send(b"d", b"e")
    link.wait_counted("cut", 2)
    link.net.heal()
    link.send(b"after")
    assert link.receive(1) == [b"after"]


def test_duplicates_follow_their_original(link):
    link.net.set_plan(1, 2, Plan(duplicate=1.0))
    link.send(b"a", b"b")
    assert link.receive(4) == [b"a", b"a", b"b", b"b"]
    assert link.net.counters()[(1, 2)].duplicated == 2


def test_reorder_swaps_a_frame_with_the_next(link):
    link.net.set_plan(1, 2, Plan(reorder=1.0))
    # Every frame asks to be held; one is held at a time, so the next goes out, then the held one.
    link.send(b"1", b"2", b"3", b"4")
    assert link.receive(4) == [b"2", b"1", b"4", b"3"]
    assert link.net.counters()[(1, 2)].reordered == 2
    # A held frame with nothing after it goes out after REORDER_HOLD_S.
    link.send(b"5")
    assert link.receive(1) == [b"5"]


def test_delayed_frames_arrive_later(link):
    link.net.set_plan(1, 2, Plan(delay=1.0, delay_ms=(100, 100)))
    start = time.monotonic()
    link.send(b"late")
    assert link.receive(1) == [b"late"]
    assert time.monotonic() - start >= 0.1
    assert link.net.counters()[(1, 2)].delayed == 1


def test_receiving_node_down_closes_the_senders_connection(link):
    link.receiver.close()
    link.listener.close()
    # The proxy sees the receiver's end close and closes the sender's end; a new connection is
    # refused while nothing listens.
    assert link.sender.recv(1) == b""
    s = socket.create_connection((HOST, link.net.proxy_ports[(1, 2)]), timeout=TIMEOUT_S)
    with s:
        assert s.recv(1) == b""
    assert link.net.counters()[(1, 2)].refused == 1


def test_stop_closes_every_connection():
    ln = Link()
    ln.net.stop()
    assert ln.sender.recv(1) == b""
    assert ln.receiver.recv(1) == b""
    with pytest.raises(OSError):
        socket.create_connection((HOST, ln.net.proxy_ports[(1, 2)]), timeout=TIMEOUT_S)
    ln.close()


def test_the_same_seed_decides_the_same_fates():
    plan = Plan(drop=0.2, duplicate=0.2, delay=0.3, delay_ms=(1, 50), reorder=0.1)
    rngs = [random.Random(seed) for seed in (7, 7, 8)]
    fates = [[decide(plan, rng) for _ in range(200)] for rng in rngs]
    assert fates[0] == fates[1]
    assert fates[0] != fates[2]
    kinds = {f if isinstance(f, str) else len(f) for f in fates[0]}
    assert kinds == {"drop", "hold", 1, 2}
