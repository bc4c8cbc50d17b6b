"""Multi-get of many keys: keel spreads keys over shards, so a multi-get fans out and must still
reply in request order, skipping misses, with every value exact."""

from __future__ import annotations

import random
import re

import pytest


def _value(i: int) -> bytes:
    return b"mgv-%d-" % i + bytes([97 + i % 26]) * (i % 50)


@pytest.mark.parametrize("n", [100, 2000])
@pytest.mark.parametrize("cmd", [b"get", b"gets"])
def test_multi_get_order_and_misses(server, n, cmd):
    rng = random.Random(n)
    keys = [b"mg%d:%05d" % (n, i) for i in range(n)]
    stored = {k for k in keys if rng.random() < 0.8}
    with server.connect() as c:
        c.send(b"".join(b"set %s %d 0 %d noreply\r\n%s\r\n" % (k, i, len(_value(i)), _value(i))
                        for i, k in enumerate(keys) if k in stored))
        assert c.call(b"") == b""
        order = keys[:]
        rng.shuffle(order)
        order += order[:10]  # repeated keys are answered each time
        c.send(cmd + b" " + b" ".join(order) + b"\r\n")
        raw = c.read_until(b"END\r\n", timeout_s=20)
    got = []
    pos = 0
    line_re = re.compile(rb"VALUE (\S+) (\d+) (\d+)( \d+)?\r\n")
    while raw[pos:] != b"END\r\n":
        m = line_re.match(raw, pos)
        assert m, f"bad line at {pos}: {raw[pos:pos+80]!r}"
        assert (m.group(4) is not None) == (cmd == b"gets"), m.group(0)
        size = int(m.group(3))
        start = m.end()
        value = raw[start : start + size]
        assert raw[start + size : start + size + 2] == b"\r\n"
        got.append((m.group(1), int(m.group(2)), value))
        pos = start + size + 2
    want_keys = [k for k in order if k in stored]
    assert [g[0] for g in got] == want_keys
    for k, flags, value in got:
        i = keys.index(k) if n <= 100 else int(k.split(b":")[1])
        assert flags == i and value == _value(i), k


def test_meta_multi_get_pipelined(server):
    """The meta-protocol way to multi-get: many `mg ... q k v` then `mn`; misses are silent."""
    keys = [b"mm:%04d" % i for i in range(500)]
    with server.connect() as c:
        c.send(b"".join(b"ms %s 4 q\r\n%04d\r\n" % (k, i) for i, k in enumerate(keys) if i % 3))
        assert c.call(b"") == b""
        got = c.call(b"".join(b"mg %s k v q\r\n" % k for k in keys))
    want = b"".join(b"VA 4 k%s\r\n%04d\r\n" % (k, i) for i, k in enumerate(keys) if i % 3)
    assert got == want
