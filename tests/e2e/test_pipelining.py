"""Pipelining: many requests in one send are answered completely and in order, and a request
split at any byte boundary (sent byte by byte) is answered exactly as if sent whole."""

from __future__ import annotations

import random
import select

import pytest


def _mixed_requests(n: int, seed: int) -> tuple[bytes, bytes]:
    """`n` requests of mixed kinds with the exact reply stream a correct server must produce.

    A model dict tracks state, so replies are predictable; CAS-bearing replies are left out.
    """
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    keys = [b"pl:%d" % i for i in range(60)]
    req, rep = [], []
    for i in range(n):
        k = rng.choice(keys)
        op = rng.choice(["set", "get", "mget", "delete", "incr", "mg", "ms", "append", "add", "touch"])
        if op == "set":
            v = b"v%d-%s" % (i, b"x" * rng.randrange(0, 40))
            req.append(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v))
            rep.append(b"STORED\r\n")
            model[k] = v
        elif op == "ms":
            v = b"%d" % rng.randrange(0, 1000)
            req.append(b"ms %s %d\r\n%s\r\n" % (k, len(v), v))
            rep.append(b"HD\r\n")
            model[k] = v
        elif op == "get":
            req.append(b"get %s\r\n" % k)
            rep.append((b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(model[k]), model[k]) if k in model else b"") + b"END\r\n")
        elif op == "mget":
            ks = rng.sample(keys, 5)
            req.append(b"get " + b" ".join(ks) + b"\r\n")
            body = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (x, len(model[x]), model[x]) for x in ks if x in model)
            rep.append(body + b"END\r\n")
        elif op == "mg":
            req.append(b"mg %s v k\r\n" % k)
            rep.append(b"VA %d k%s\r\n%s\r\n" % (len(model[k]), k, model[k]) if k in model else b"EN k%s\r\n" % k)
        elif op == "delete":
            req.append(b"delete %s\r\n" % k)
            rep.append(b"DELETED\r\n" if model.pop(k, None) is not None else b"NOT_FOUND\r\n")
        elif op == "incr":
            req.append(b"incr %s 1\r\n" % k)
            if k not in model:
                rep.append(b"NOT_FOUND\r\n")
            elif model[k].isdigit():
                new = b"%d" % (int(model[k]) + 1)
                rep.append(new + b"\r\n")
                # memcached pads a shorter result with spaces; never shorter on +1, so exact.
                model[k] = new if len(new) >= len(model[k]) else new + b" " * (len(model[k]) - len(new))
            else:
                rep.append(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        elif op == "append":
            req.append(b"append %s 0 0 1\r\nZ\r\n" % k)
            if k in model:
                model[k] += b"Z"
                rep.append(b"STORED\r\n")
            else:
                rep.append(b"NOT_STORED\r\n")
        elif op == "add":
            req.append(b"add %s 0 0 1\r\nA\r\n" % k)
            if k in model:
                rep.append(b"NOT_STORED\r\n")
            else:
                model[k] = b"A"
                rep.append(b"STORED\r\n")
        elif op == "touch":
            req.append(b"touch %s 1000\r\n" % k)
            rep.append(b"TOUCHED\r\n" if k in model else b"NOT_FOUND\r\n")
    return b"".join(req), b"".join(rep)


@pytest.mark.parametrize("seed", [1, 2])
def test_1000_mixed_requests_in_one_send(fresh_server, seed):
    req, want = _mixed_requests(1000, seed)
    with fresh_server.connect() as c:
        c.send(req)
        got = c.read_exact(len(want), timeout_s=20)
        if got != want:
            i = next(i for i in range(len(want)) if got[i] != want[i])
            pytest.fail(f"reply stream differs at byte {i}: got {got[max(0, i-200):i+80]!r}\n"
                        f"want {want[max(0, i-200):i+80]!r}")
        # Nothing extra after the expected stream.
        assert c.call(b"") == b""


def test_pipelined_replies_to_many_gets(server):
    """500 gets of one key in one send: 500 complete replies in order (batched writes welcome)."""
    with server.connect() as c:
        assert c.set("pg", b"hello") == b"STORED\r\n"
        c.send(b"get pg\r\n" * 500)
        one = b"VALUE pg 0 5\r\nhello\r\nEND\r\n"
        assert c.read_exact(len(one) * 500) == one * 500
        assert c.call(b"") == b""


SPLIT_CASES = [
    (b"set sp 3 0 5\r\nhe\r\no\r\n", b"STORED\r\n"),
    (b"get sp nope sp\r\n", b"VALUE sp 3 5\r\nhe\r\no\r\nVALUE sp 3 5\r\nhe\r\no\r\nEND\r\n"),
    (b"append sp 0 0 2\r\n!!\r\n", b"STORED\r\n"),
    (b"mg sp v f k\r\n", b"VA 7 f3 ksp\r\nhe\r\no!!\r\n"),
    (b"ms sp 2 T0\r\nab\r\n", b"HD\r\n"),
    (b"incr nope 1\r\n", b"NOT_FOUND\r\n"),
    (b"delete sp\r\n", b"DELETED\r\n"),
    (b"bogus\r\n", b"ERROR\r\n"),
]


def test_requests_split_at_every_byte(server):
    """Each request is sent one byte per send (TCP_NODELAY), so the server sees it split at every
    boundary; the reply must be the same, and must not start before the last byte arrives."""
    with server.connect() as c:
        for req, want in SPLIT_CASES:
            for i in range(len(req)):
                c.send(req[i : i + 1])
                if i == len(req) - 2:
                    # One byte short of a complete request: nothing may have been answered yet.
                    ready, _, _ = select.select([c.sock], [], [], 0.05)
                    assert not ready, f"reply before the request {req!r} was complete"
            assert c.read_exact(len(want)) == want, req
        assert c.call(b"") == b""


def test_pipeline_split_across_two_sends_everywhere(server):
    """A pipeline of three requests cut into two sends at every possible point."""
    pipe = b"set ss 0 0 3\r\nabc\r\nget ss\r\ndelete ss\r\n"
    want = b"STORED\r\nVALUE ss 0 3\r\nabc\r\nEND\r\nDELETED\r\n"
    with server.connect() as c:
        for cut in range(1, len(pipe)):
            c.send(pipe[:cut])
            c.send(pipe[cut:])
            assert c.read_exact(len(want)) == want, f"cut at {cut}"
