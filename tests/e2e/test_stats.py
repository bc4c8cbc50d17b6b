"""`stats`: STAT lines ending in END with the general counters, and the counters move as the
operations say (each test on a server of its own, so nothing else moves them)."""

from __future__ import annotations

import re

REQUIRED = ["pid", "uptime", "time", "version", "curr_items", "total_items", "cmd_get", "cmd_set",
            "get_hits", "get_misses", "curr_connections", "total_connections"]
NUMERIC = [n for n in REQUIRED if n != "version"]


def test_stats_format(fresh_server):
    with fresh_server.connect() as c:
        c.send(b"stats\r\n")
        raw = c.read_until(b"END\r\n")
        assert c.call(b"") == b"", "bytes after END"
    lines = raw.split(b"\r\n")
    assert lines[-2:] == [b"END", b""]
    for line in lines[:-2]:
        assert re.fullmatch(rb"STAT [a-z_0-9:]+ [^\r\n]*", line), line
    with fresh_server.connect() as c:
        stats = c.stats()
    for name in REQUIRED:
        assert name in stats, f"stats lacks {name}"
    for name in NUMERIC:
        assert re.fullmatch(r"\d+", stats[name]), (name, stats[name])
    assert int(stats["pid"]) == fresh_server.proc.pid
    assert int(stats["curr_items"]) == 0


def test_stats_counters_move(fresh_server):
    with fresh_server.connect() as c:
        s0 = c.stats()
        assert c.set("st_a", b"1") == b"STORED\r\n"
        assert c.set("st_b", b"2") == b"STORED\r\n"
        assert c.set("st_a", b"3") == b"STORED\r\n"  # overwrite: still 2 items
        c.send(b"get st_a st_missing st_b\r\n")
        c.read_until(b"END\r\n")
        assert c.get("st_missing2") is None
        s1 = c.stats()

        def d(name):
            return int(s1[name]) - int(s0[name])

        assert d("cmd_set") == 3
        assert d("cmd_get") == 4  # counted per key, as memcached does
        assert d("get_hits") == 2
        assert d("get_misses") == 2
        assert int(s1["curr_items"]) == 2
        assert d("total_items") == 3

        assert c.call(b"delete st_a\r\n") == b"DELETED\r\n"
        s2 = c.stats()
        assert int(s2["curr_items"]) == 1
        assert int(s2["uptime"]) >= int(s0["uptime"])


def test_stats_connections(fresh_server):
    with fresh_server.connect() as c:
        before = int(c.stats()["total_connections"])
        for _ in range(5):
            with fresh_server.connect() as other:
                assert other.call(b"version\r\n").startswith(b"VERSION ")
        after = c.stats()
        assert int(after["total_connections"]) - before >= 5
        assert int(after["curr_connections"]) >= 1
