"""A bad client never hurts others: garbage, a 2 MB line without a newline, a half-sent value and
an abrupt disconnect on some connections while another keeps doing set/get; the server answers
new connections afterwards."""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import pytest

from conftest import HOST


class GoodClient(threading.Thread):
    """set/get in a loop on one connection, checking every value, until told to stop."""

    def __init__(self, server, ops_max: int = 200_000):
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.ops = 0
        self.ops_max = ops_max
        self.error: BaseException | None = None

    def run(self):
        try:
            with self.server.connect(timeout_s=5.0) as c:
                while not self.stop.is_set() and self.ops < self.ops_max:
                    k = b"good:%d" % (self.ops % 50)
                    v = b"value-%d" % self.ops
                    assert c.set(k, v) == b"STORED\r\n"
                    assert c.get(k) == v
                    self.ops += 1
        except BaseException as e:  # reported by the test thread
            self.error = e


def _bad(server, payload: bytes, read_reply: bool = True):
    """Send `payload` on a new connection; tolerate the server closing it or erroring."""
    s = socket.create_connection((HOST, server.port), timeout=5.0)
    try:
        try:
            s.sendall(payload)
        except OSError:
            return
        if read_reply:
            s.settimeout(0.5)
            try:
                s.recv(65536)
            except OSError:
                pass
    finally:
        s.close()


def test_bad_clients_do_not_hurt_a_good_one(server):
    good = GoodClient(server)
    good.start()
    try:
        rng = random.Random(7)
        progress = []
        bad_payloads = [
            os.urandom(64 * 1024),                               # random bytes
            b"\x00" * 100_000,                                   # NULs, no newline
            b"x" * (2 * 1024 * 1024),                            # a 2 MB line, no newline
            b"get " + b"k" * (2 * 1024 * 1024) + b"\r\n",        # a 2 MB get line
            b"set half 0 0 1000\r\n" + b"h" * 10,                # value never finished
            b"set neg 0 0 -5\r\n" * 1000,                        # rejected lines in bulk
            b"\r\n" * 50_000,                                    # empty lines
            bytes(rng.randrange(256) for _ in range(10_000)) + b"\r\n",
            b"mg " + b"\xff" * 300 + b" v\r\n",
            b"get a\r\n" * 20_000,                               # reads no replies, then leaves
        ]
        for p in bad_payloads:
            before = good.ops
            _bad(server, p, read_reply=p is not bad_payloads[-1])
            progress.append(good.ops - before)
            assert good.error is None, good.error
        # The good client kept going through all of it.
        deadline = time.monotonic() + 10
        target = good.ops + 100
        while good.ops < target and good.error is None:
            assert time.monotonic() < deadline, "good client stalled after the bad clients"
            time.sleep(0.01)  # waiting for the other thread's progress counter, bounded
    finally:
        good.stop.set()
        good.join(timeout=10)
    assert not good.is_alive()
    assert good.error is None, good.error
    assert good.ops > 100
    # New connections are served.
    with server.connect() as c:
        assert c.set("afterbad", b"ok") == b"STORED\r\n"
        assert c.get("afterbad") == b"ok"


def test_long_line_gets_an_error_or_close_not_a_hang(server):
    """A 2 MB line with no newline: the server either answers an error or closes, within a bound."""
    s = socket.create_connection((HOST, server.port), timeout=10.0)
    try:
        try:
            s.sendall(b"y" * (2 * 1024 * 1024) + b"\r\n")
        except OSError:
            return  # closed on us: acceptable
        s.settimeout(10.0)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return
        assert data == b"" or data.startswith((b"CLIENT_ERROR", b"SERVER_ERROR", b"ERROR")), data
    finally:
        s.close()
    with server.connect() as c:
        assert c.call(b"version\r\n").startswith(b"VERSION ")


def test_many_connections_opened_and_dropped(server):
    """500 connections opened and dropped mid-request; the server keeps serving."""
    for i in range(500):
        s = socket.create_connection((HOST, server.port), timeout=5.0)
        s.sendall(b"set churn%d 0 0 10\r\nabc" % i)
        s.close()
    with server.connect() as c:
        assert c.get("churn1") is None
        assert c.set("churn", b"ok") == b"STORED\r\n"
        assert c.get("churn") == b"ok"


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_costs_bounded_memory_and_is_closed(keel_node):
    """Issue 13, overload: 2,000 pipelined gets of a 512 KiB value from a client that never
    reads would be 1 GiB of replies. The node holds a bounded buffer (it writes a round's
    replies as they fill, and blocks), others keep their latency, and the stalled connection is
    closed once its replies have waited WRITE_STALL_MAX (10 s)."""
    big = os.urandom(512 << 10)
    with keel_node.connect() as c:
        assert c.set("stall:big", big) == b"STORED\r\n"
        assert c.get("stall:big") == big  # cached now: replies share the cached value
        closes_before = int(c.stats()["keel_write_stall_closes"])
    pid = keel_node.proc.pid
    rss_before = _rss_bytes(pid)
    bad = socket.socket()
    bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bad.connect((HOST, keel_node.port))
    bad.settimeout(5)
    sent = 0
    try:
        for _ in range(20):
            bad.sendall(b"get stall:big\r\n" * 100)
            sent += 100
    except (socket.timeout, OSError):
        pass  # the node stopped reading from us: that is the point
    time.sleep(1.0)
    grown = _rss_bytes(pid) - rss_before
    assert grown < 96 << 20, f"RSS grew {grown >> 20} MiB for {sent} unread gets"
    # Another client is served meanwhile, quickly.
    with keel_node.connect(timeout_s=2.0) as c:
        t0 = time.monotonic()
        for i in range(50):
            assert c.set(b"stall:ok:%d" % i, b"v") == b"STORED\r\n"
            assert c.get(b"stall:ok:%d" % i) == b"v"
        assert time.monotonic() - t0 < 2.0
    # Bounded wait for the stall close (10 s after the last write made progress).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with keel_node.connect() as c:
            closes = int(c.stats()["keel_write_stall_closes"])
        if closes > closes_before:
            break
        time.sleep(0.5)
    assert closes == closes_before + 1, "the stalled connection was not closed"
    bad.close()


CONNECTIONS_MAX = 10_000  # net.connections_max in hw-configs/dev.toml, for the whole node


def _latency_us(s: socket.socket, n: int = 500) -> tuple[float, float]:
    """p50 and p99 of `n` one-at-a-time gets on connection `s`, in microseconds."""
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(b"get c10k:probe\r\n")
        b = b""
        while not b.endswith(b"END\r\n"):
            chunk = s.recv(100)
            assert chunk, "closed"
            b += chunk
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[n // 2] * 1e6, lat[n * 99 // 100] * 1e6


def test_ten_thousand_connections_cost_little_and_the_next_one_is_refused(keel_node):
    """Issue 13, overload: 10,000 open connections (net.connections_max, counted for the whole
    node, not per shard) each answer, cost the node a few KiB each, leave another client its
    latency, and the 10,001st is refused with memcached's error."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS_MAX + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    pid = keel_node.proc.pid
    rss_before = _rss_bytes(pid)
    # The first connection is the probe: its latency alone, then beside the other 9,999.
    probe = socket.create_connection((HOST, keel_node.port), timeout=10)
    conns = [probe]
    try:
        p50_alone, p99_alone = _latency_us(probe)
        while len(conns) < CONNECTIONS_MAX:
            conns.append(socket.create_connection((HOST, keel_node.port), timeout=10))
        for c in conns[1:]:
            c.sendall(b"version\r\n")
        for c in conns[1:]:
            assert c.recv(100).startswith(b"VERSION "), "a connection was not served"
        grown = _rss_bytes(pid) - rss_before
        per_conn = grown / len(conns)
        p50, p99 = _latency_us(probe)
        print(f"RSS {per_conn:.0f} B per connection; probe get p50/p99 {p50_alone:.0f}/"
              f"{p99_alone:.0f} us alone, {p50:.0f}/{p99:.0f} us beside {len(conns) - 1} others")
        assert per_conn < 16 << 10, f"{per_conn:.0f} bytes of RSS per idle connection"
        assert p99 < 50_000, f"probe p99 {p99:.0f} us beside 10,000 connections"
        extra = socket.create_connection((HOST, keel_node.port), timeout=10)
        try:
            assert extra.recv(100) == b"SERVER_ERROR too many open connections\r\n"
        finally:
            extra.close()
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 30
    while True:
        with keel_node.connect() as c:
            s = c.stats()
        if s["curr_connections"] == "1":
            break
        assert time.monotonic() < deadline, f"curr_connections stays {s['curr_connections']}"
        time.sleep(0.1)
    assert int(s["rejected_connections"]) == 1, s["rejected_connections"]
