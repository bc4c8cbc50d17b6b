"""Linearizability (issue 13, item 2): clients on every node of a three-node cluster behind the
fault-injecting proxy run sets, gets, deletes and incrs on a few shared keys while nodes are
isolated, links turn lossy and a node is SIGKILLed and restarted; each operation is recorded
(invocation, response, result, or unknown outcome) and every key's history must be linearizable
against a register (linearizability.py). A violation names the key and prints its history.

The checker's own tests come first: histories that are and are not linearizable, decided by
hand, so a checker that accepts everything fails here.

Seeds: `KEEL_LIN_SEEDS` (default 1); a soak runs many:
`KEEL_LIN_SEEDS=1-30 python3 -m pytest tests/e2e/test_linearizability.py -k faults`.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time

import pytest

from conftest import HOST, IS_KEEL
from faultnet import CLEAN, Plan
from linearizability import INF, Op, check, linearizable
from test_cluster import _wait_converged, _wait_leaders
from test_cluster_faults import start_faulty_cluster  # noqa: F401 (fixture)
from test_cluster_random import seeds_from_env

# --------------------------------------------------------------------------------------------
# The checker


def op(kind, arg, call, ret, result=None, client=0, key=b"k"):
    return Op(client=client, key=key, kind=kind, arg=arg, call=call, ret=ret, result=result)


def test_checker_accepts_a_sequential_history():
    assert linearizable(
        [
            op("get", None, 0, 1, None),
            op("set", 5, 2, 3),
            op("get", None, 4, 5, 5),
            op("incr", 2, 6, 7, 7),
            op("delete", None, 8, 9, True),
            op("delete", None, 10, 11, False),
            op("incr", 1, 12, 13, None),
        ]
    )


def test_checker_refuses_a_stale_read_after_a_completed_write():
    assert not linearizable([op("set", 1, 0, 1), op("set", 2, 2, 3), op("get", None, 4, 5, 1)])


def test_checker_orders_concurrent_operations_either_way():
    # The get overlaps the set: it may see the old value or the new one, not a third.
    for seen in (None, 7):
        assert linearizable([op("set", 7, 0, 10), op("get", None, 1, 2, seen, client=1)])
    assert not linearizable([op("set", 7, 0, 10), op("get", None, 1, 2, 8, client=1)])


def test_checker_lets_an_unknown_write_take_effect_late_or_never():
    unknown = op("set", 3, 0, INF)
    assert linearizable([unknown, op("get", None, 5, 6, None, client=1)])
    assert linearizable([unknown, op("get", None, 5, 6, 3, client=1)])
    # Once seen, it cannot be undone by nothing.
    assert not linearizable(
        [unknown, op("get", None, 5, 6, 3, client=1), op("get", None, 7, 8, None, client=1)]
    )


def test_checker_counts_an_incr_once():
    # Two incrs of 1 from 0, both acknowledged: the value is 2, never 3 (a duplicated forward
    # applied twice would read 3).
    base = [op("set", 0, 0, 1), op("incr", 1, 2, 3, 1), op("incr", 1, 4, 5, 2)]
    assert linearizable(base + [op("get", None, 6, 7, 2)])
    assert not linearizable(base + [op("get", None, 6, 7, 3)])


def test_checker_report_names_the_key_and_prints_its_history():
    report = check(
        [
            op("set", 1, 0, 1, key=b"good"),
            op("set", 1, 0, 1, key=b"bad"),
            op("get", None, 2, 3, 9, key=b"bad", client=4),
        ]
    )
    assert report is not None and "b'bad'" in report and "client 4: get" in report, report
    assert check([op("set", 1, 0, 1), op("get", None, 2, 3, 1)]) is None


# --------------------------------------------------------------------------------------------
# Clients under faults

CLIENTS = 4
KEYS = [b"lin:%d" % i for i in range(8)]
OPS_PER_CLIENT_MAX = 3000  # the clients run until the faults are over, at most this many ops
FAULT_STEPS = 6  # isolate, lossy, kill, isolate, lossy, kill
RUN_S_MAX = 90.0  # the clients stop here in any case
ANSWERED_MIN = 400  # after the faults the clients go on until this many operations were answered
REPLY_TIMEOUT_S = 30.0


class Client(threading.Thread):
    """Runs random operations, one at a time, each through a random node, until `stop`
    (at most OPS_PER_CLIENT_MAX), and records each as an Op. A broken connection or a timeout leaves the op's outcome
    unknown (and the connection is opened again for the next op)."""

    def __init__(self, cid: int, ports: list[int], seed: int, t0: float, stop: threading.Event):
        super().__init__(name=f"lin-client-{cid}", daemon=True)
        self.cid, self.ports, self.t0, self.stop = cid, ports, t0, stop
        self.rng = random.Random(seed * 100 + cid)
        self.history: list[Op] = []
        self.socks: dict[int, socket.socket] = {}
        self.errors: list[str] = []

    def sock(self, port: int) -> socket.socket:
        s = self.socks.get(port)
        if s is None:
            s = socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT_S)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks[port] = s
        return s

    def drop(self, port: int):
        s = self.socks.pop(port, None)
        if s is not None:
            s.close()

    def request(self, port: int, req: bytes, until: bytes) -> bytes:
        s = self.sock(port)
        s.sendall(req)
        buf = b""
        while not re.search(until, buf):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def run(self):
        try:
            for i in range(OPS_PER_CLIENT_MAX):
                if self.stop.is_set() or time.monotonic() - self.t0 > RUN_S_MAX:
                    return
                self.one(i)
        except Exception as e:  # a bug in this recorder, not a server outcome
            self.errors.append(f"{type(e).__name__}: {e}")

    def one(self, i: int):
        port = self.rng.choice(self.ports)
        key = self.rng.choice(KEYS)
        kind = self.rng.choice(["set", "set", "get", "get", "incr", "delete"])
        arg = {"set": self.cid * 1_000_000 + i, "incr": 1}.get(kind)
        req = {
            "set": b"set %s 0 0 %d\r\n%d\r\n" % (key, len(b"%d" % (arg or 0)), arg or 0),
            "get": b"get %s\r\n" % key,
            "incr": b"incr %s 1\r\n" % key,
            "delete": b"delete %s\r\n" % key,
        }[kind]
        until = rb"END\r\n|SERVER_ERROR[^\r]*\r\n" if kind == "get" else rb"\r\n"
        try:
            self.sock(port)
        except OSError:
            return  # not connected (the node is down): nothing was sent, nothing to record
        call = time.monotonic() - self.t0
        try:
            reply = self.request(port, req, until)
        except (OSError, ConnectionError):
            self.drop(port)
            reply = None
        ret = time.monotonic() - self.t0
        o = Op(client=self.cid, key=key, kind=kind, arg=arg, call=call)
        if reply is None or reply.startswith(b"SERVER_ERROR"):
            if kind != "get":
                self.history.append(o)  # may or may not have taken effect
            return
        o.ret = ret
        if kind == "set":
            assert reply == b"STORED\r\n", reply
        elif kind == "get":
            m = re.match(rb"VALUE \S+ \d+ (\d+)\r\n", reply)
            o.result = int(reply[m.end() : m.end() + int(m.group(1))].strip()) if m else None
            assert m or reply == b"END\r\n", reply
        elif kind == "incr":
            o.result = None if reply == b"NOT_FOUND\r\n" else int(reply.strip())
        else:
            assert reply in (b"DELETED\r\n", b"NOT_FOUND\r\n"), reply
            o.result = reply == b"DELETED\r\n"
        self.history.append(o)


@pytest.mark.parametrize("seed", seeds_from_env("KEEL_LIN_SEEDS", "1"))
def test_concurrent_clients_under_faults_are_linearizable(start_faulty_cluster, seed):
    if not IS_KEEL:
        pytest.skip("keel only")
    nodes, net = start_faulty_cluster(seed=100 + seed)
    rng = random.Random(seed)
    t0 = time.monotonic()
    stop = threading.Event()
    clients = [Client(c, [n.port for n in nodes], seed, t0, stop) for c in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        # Faults while the clients run: an isolated node, a lossy and duplicating network, a
        # SIGKILL and restart. Each lasts a bounded time; the loop ends when the clients do.
        for step in range(FAULT_STEPS):
            if time.monotonic() - t0 > RUN_S_MAX / 2:
                break
            victim = rng.choice(nodes)
            fault = ("isolate", "lossy", "kill")[step % 3]
            if fault == "isolate":
                net.isolate(victim.node_id)
                time.sleep(rng.uniform(0.5, 2.0))  # the fault's length, not a wait for an event
                net.heal()
            elif fault == "lossy":
                plan = Plan(drop=0.05, duplicate=0.05, delay=0.2, delay_ms=(1, 50), reorder=0.05)
                for a in nodes:
                    for b in nodes:
                        if a is not b:
                            net.set_plan(a.node_id, b.node_id, plan)
                time.sleep(rng.uniform(0.5, 2.0))
                for a in nodes:
                    for b in nodes:
                        if a is not b:
                            net.set_plan(a.node_id, b.node_id, CLEAN)
            else:
                victim.kill()
                time.sleep(rng.uniform(0.2, 1.0))
                victim.start()
            _wait_leaders(nodes)
            # A healthy stretch between faults, so most operations meet a working cluster.
            time.sleep(1.0)
        # Requests through an isolated node wait out the request timeout (5 s): make sure the
        # history is long enough to say something, on a healthy cluster.
        while time.monotonic() - t0 < RUN_S_MAX and any(c.is_alive() for c in clients):
            if sum(o.ret != INF for c in clients for o in c.history) >= ANSWERED_MIN:
                break
            time.sleep(0.1)  # bounded poll of the clients' progress
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=REPLY_TIMEOUT_S * 3)
    assert not any(c.is_alive() for c in clients), "a client never finished"
    errors = [e for c in clients for e in c.errors]
    assert not errors, errors
    _wait_converged(nodes)
    history = [o for c in clients for o in c.history]
    known = [o for o in history if o.ret != INF]
    assert len(known) >= ANSWERED_MIN, f"only {len(known)} operations got an answer"
    assert net.total().cut + net.total().dropped > 0, net.summary()
    unknown = len(history) - len(known)
    print(f"seed {seed}: {len(known)} ops answered, {unknown} unknown, {net.summary()}")
    report = check(history)
    assert report is None, report
