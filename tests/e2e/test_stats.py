"""`stats`: STAT lines ending in END with the general counters, and the counters move as the
operations say (each test on a server of its own, so nothing else moves them)."""

from __future__ import annotations

import re

import pytest

from conftest import HOST

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


# --------------------------------------------------------------------------------------------
# stats groups: latency (Keel's), settings, conns, items (memcached 1.6.18's shapes)


def stat_group(c, group: bytes) -> list[tuple[str, str]]:
    """(name, value) of every STAT line of `stats <group>`, in order; checks the framing."""
    c.send(b"stats " + group + b"\r\n")
    raw = c.read_until(b"END\r\n")
    lines = raw.split(b"\r\n")
    assert lines[-2:] == [b"END", b""], raw[-40:]
    rows = []
    for line in lines[:-2]:
        m = re.fullmatch(rb"STAT (\S+) ([^\r\n]*)", line)
        assert m, line
        rows.append((m.group(1).decode(), m.group(2).decode()))
    return rows


LATENCY_FIELDS = ["count", "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us"]


def latency(c) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, value in stat_group(c, b"latency"):
        timer, field = name.split(":")
        assert field in LATENCY_FIELDS, name
        assert re.fullmatch(r"\d+", value), (name, value)
        out.setdefault(timer, {})[field] = int(value)
    for timer, fields in out.items():
        assert list(fields) == LATENCY_FIELDS, (timer, fields)
    return out


@pytest.mark.keel_only
def test_stats_latency_counts_a_known_workload(fresh_server):
    """N sets and M gets on one connection give exactly N and M in `stats latency` (a request is
    timed once its reply is written, before the connection reads its next request), with
    ordered percentiles; every set went through the raftlog and Raft, so those stages moved."""
    n_sets, n_gets = 25, 17
    with fresh_server.connect() as c:
        for i in range(n_sets):
            assert c.set(f"lat_{i}", b"v" * (i + 1)) == b"STORED\r\n"
        for i in range(n_gets):
            assert c.get(f"lat_{i}") == b"v" * (i + 1)
        lat = latency(c)
        assert lat["set"]["count"] == n_sets
        assert lat["get"]["count"] == n_gets
        for timer, f in lat.items():
            assert f["count"] > 0, timer
            vals = [f[k] for k in LATENCY_FIELDS[1:]]
            assert vals == sorted(vals), (timer, f)
        assert lat["raftlog_flush"]["count"] >= 1
        assert 1 <= lat["raft_commit"]["count"] <= n_sets
        assert lat["raft_apply"]["count"] >= lat["raft_commit"]["count"]
        # The first `stats latency` is itself timed once its reply is written.
        assert latency(c)["stats"]["count"] == 1


def test_stats_settings_names_the_profile(server):
    with server.connect() as c:
        s = dict(stat_group(c, b"settings"))
    for name in ["maxbytes", "maxconns", "tcpport", "item_size_max", "num_threads",
                 "cas_enabled", "evictions"]:
        assert name in s, f"stats settings lacks {name}"
    assert int(s["tcpport"]) == server.port
    assert int(s["item_size_max"]) == 1024 * 1024
    assert int(s["maxconns"]) > 0 and int(s["maxbytes"]) > 0
    assert s["cas_enabled"] == "yes"


def test_stats_conns_lists_each_open_connection(server):
    with server.connect() as a, server.connect() as b:
        assert b.call(b"version\r\n").startswith(b"VERSION ")
        rows = stat_group(a, b"conns")
        mine = {f"tcp:{HOST}:{x.sock.getsockname()[1]}" for x in (a, b)}
        by_fd: dict[str, dict[str, str]] = {}
        for name, value in rows:
            m = re.fullmatch(r"(\d+):(addr|listen_addr|state|secs_since_last_cmd)", name)
            assert m, name
            by_fd.setdefault(m.group(1), {})[m.group(2)] = value
        clients = {r["addr"]: r for r in by_fd.values() if r.get("state") != "conn_listening"}
        assert mine <= set(clients), (mine, rows)
        for addr in mine:
            r = clients[addr]
            assert r["listen_addr"] == f"tcp:{HOST}:{server.port}", r
            assert r["state"].startswith("conn_"), r
            assert re.fullmatch(r"\d+", r["secs_since_last_cmd"]), r


def test_stats_items_counts_the_items(fresh_server):
    with fresh_server.connect() as c:
        assert stat_group(c, b"items") == [], "no items: nothing but END"
        for i in range(3):
            assert c.set(f"it_{i}", b"x") == b"STORED\r\n"
        s = dict(stat_group(c, b"items"))
    assert int(s["items:1:number"]) == 3
    assert int(s["items:1:evicted"]) == 0
    assert "items:1:mem_requested" in s
