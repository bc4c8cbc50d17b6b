"""keel only: the writes of one partition that arrive together share one Raft entry.

Issue 10 (durable writes at memory speed) made a pipeline's sets of one partition one Raft
proposal instead of one each. What must not change for a client: each write still gets its own
reply, in order; a read or a read-modify-write in the same pipeline sees the writes before it; CAS
uniques never repeat (two writes in one entry get different ones); and a SIGKILL after the replies
loses nothing. These tests would fail if batching answered from the wrong op, applied a batch after
a later read, or gave the ops of one entry the same CAS.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.keel_only

N = 400  # sets in one pipeline: with 64 partitions, several per partition


def _sets(prefix: bytes, n: int) -> bytes:
    return b"".join(b"set %s:%d 0 0 %d\r\nv%d\r\n" % (prefix, i, len(b"v%d" % i), i) for i in range(n))


def _gets_cas(c, keys: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
    raw = c.call(b"gets " + b" ".join(keys) + b"\r\n")
    out = {}
    for m in re.finditer(rb"VALUE (\S+) \d+ (\d+) (\d+)\r\n", raw):
        start = m.end()
        out[m.group(1)] = (raw[start : start + int(m.group(2))], int(m.group(3)))
    return out


def test_a_pipeline_of_sets_is_batched_and_every_write_is_answered_and_kept(keel_node):
    with keel_node.connect() as c:
        before = c.stats()
        replies = c.call(_sets(b"bt", N))
        assert replies == b"STORED\r\n" * N, replies[:200]
        after = c.stats()
        sets = int(after["cmd_set"]) - int(before["cmd_set"])
        proposals = int(after["keel_raft_proposals"]) - int(before["keel_raft_proposals"])
        ops = int(after["keel_raft_proposed_ops"]) - int(before["keel_raft_proposed_ops"])
        assert sets == ops == N
        assert proposals < N, f"{N} pipelined sets took {proposals} proposals: nothing was batched"
        keys = [b"bt:%d" % i for i in range(N)]
        got = _gets_cas(c, keys)
        assert {k: v for k, (v, _) in got.items()} == {b"bt:%d" % i: b"v%d" % i for i in range(N)}
        cas = [cas for _, cas in got.values()]
        assert len(set(cas)) == N, "two writes got the same CAS unique"
    keel_node.crash_and_restart()
    with keel_node.connect() as c:
        got = _gets_cas(c, [b"bt:%d" % i for i in range(N)])
        assert len(got) == N, f"SIGKILL after {N} acknowledged sets lost {N - len(got)}"


def test_a_read_or_an_incr_in_the_pipeline_sees_the_writes_before_it(keel_node):
    with keel_node.connect() as c:
        req = (
            b"set order:k 0 0 2\r\nv1\r\n"
            b"set order:k 0 0 2\r\nv2\r\n"
            b"get order:k\r\n"
            b"set order:n 0 0 1\r\n5\r\n"
            b"incr order:n 3\r\n"
            b"set order:n 0 0 2\r\n10\r\n"
            b"get order:n\r\n"
            b"delete order:k\r\n"
            b"get order:k\r\n"
        )
        assert c.call(req) == (
            b"STORED\r\nSTORED\r\n"
            b"VALUE order:k 0 2\r\nv2\r\nEND\r\n"
            b"STORED\r\n8\r\nSTORED\r\n"
            b"VALUE order:n 0 2\r\n10\r\nEND\r\n"
            b"DELETED\r\nEND\r\n"
        )


def test_two_writes_of_one_key_in_one_entry_get_different_cas_and_the_last_wins(keel_node):
    with keel_node.connect() as c:
        assert c.call(b"set same 0 0 1\r\na\r\nset same 0 0 1\r\nb\r\n") == b"STORED\r\n" * 2
        (value, cas1) = _gets_cas(c, [b"same"])[b"same"]
        assert value == b"b"
        # The CAS unique from gets names exactly this version: a cas with it succeeds once.
        assert c.call(b"cas same 0 0 1 %d\r\nc\r\n" % cas1) == b"STORED\r\n"
        assert c.call(b"cas same 0 0 1 %d\r\nd\r\n" % cas1) == b"EXISTS\r\n"
        (value, cas2) = _gets_cas(c, [b"same"])[b"same"]
        assert (value, cas2 > cas1) == (b"c", True)
