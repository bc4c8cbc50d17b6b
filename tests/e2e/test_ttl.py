"""TTL, memcached semantics: relative seconds up to 30 days, absolute unix time beyond that,
negative = already expired; touch/gat/mg T extend. Expiry is polled with a bounded deadline.

memcached's clock ticks once a second, so an item with exptime 1 may live up to ~2 s; deadlines
below allow that and more, and every poll loop is bounded.
"""

from __future__ import annotations

import time

THIRTY_DAYS = 30 * 24 * 3600


def _wait_gone(c, key: str, deadline_s: float) -> float:
    """Poll until `key` misses; returns the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while c.get(key) is not None:
        assert time.monotonic() - start < deadline_s, f"{key} did not expire within {deadline_s}s"
        time.sleep(0.1)  # polling a time-based effect; bounded by the deadline above
    return time.monotonic() - start


def test_short_ttl_expires(server):
    with server.connect() as c:
        assert c.set("ttl1", b"x", exptime=1) == b"STORED\r\n"
        assert c.set("ttl2", b"y", exptime=2) == b"STORED\r\n"
        assert c.set("ttl_forever", b"z", exptime=0) == b"STORED\r\n"
        assert c.get("ttl2") == b"y"
        _wait_gone(c, "ttl1", 5.0)
        _wait_gone(c, "ttl2", 6.0)
        assert c.get("ttl_forever") == b"z"
        # Expired items are gone for every command, not only get.
        assert c.call(b"touch ttl1 100\r\nincr ttl1 1\r\nmg ttl2 v\r\n") == \
            b"NOT_FOUND\r\nNOT_FOUND\r\nEN\r\n"
        # ...and add treats them as absent.
        assert c.call(b"add ttl1 0 0 1\r\nn\r\n") == b"STORED\r\n"


def test_negative_exptime_is_expired_at_once(server):
    with server.connect() as c:
        assert c.set("neg", b"old") == b"STORED\r\n"
        assert c.set("neg", b"x", exptime=-1) == b"STORED\r\n"
        assert c.get("neg") is None
        assert c.call(b"ms negm 1 T-1\r\nx\r\nmg negm v\r\n") == b"HD\r\nEN\r\n"


def test_absolute_exptime_in_future_works(server):
    with server.connect() as c:
        future = int(time.time()) + 3600
        assert future > THIRTY_DAYS
        assert c.set("absf", b"x", exptime=future) == b"STORED\r\n"
        assert c.get("absf") == b"x"
        c.send(b"mg absf t\r\n")
        line = c.read_line()
        assert line.startswith(b"HD t"), line
        ttl = int(line[4:].strip())
        assert 3590 <= ttl <= 3601, line


def test_absolute_exptime_in_past_expires(server):
    with server.connect() as c:
        past = int(time.time()) - 3600
        assert c.set("absp", b"x", exptime=past) == b"STORED\r\n"
        assert c.get("absp") is None
        # Just over 30 days is also an absolute time (long past), not a relative one.
        assert c.set("abs30", b"x", exptime=THIRTY_DAYS + 1) == b"STORED\r\n"
        assert c.get("abs30") is None
        # Exactly 30 days is still relative.
        assert c.set("rel30", b"x", exptime=THIRTY_DAYS) == b"STORED\r\n"
        assert c.get("rel30") == b"x"


def test_touch_gat_and_mg_T_extend(server):
    """Items touched/gat'd/mg-T'd to a long TTL outlive a control item with the original TTL."""
    with server.connect() as c:
        for k in ("ext_control", "ext_touch", "ext_gat", "ext_gats", "ext_mg"):
            assert c.set(k, b"v-" + k.encode(), exptime=2) == b"STORED\r\n"
        assert c.call(b"touch ext_touch 100\r\n") == b"TOUCHED\r\n"
        assert c.call(b"gat 100 ext_gat\r\n") == b"VALUE ext_gat 0 9\r\nv-ext_gat\r\nEND\r\n"
        assert c.call(b"gats 100 ext_gats\r\n").startswith(b"VALUE ext_gats 0 10 ")
        assert c.call(b"mg ext_mg T100\r\n") == b"HD\r\n"
        _wait_gone(c, "ext_control", 6.0)
        assert c.get("ext_touch") == b"v-ext_touch"
        assert c.get("ext_gat") == b"v-ext_gat"
        assert c.get("ext_gats") == b"v-ext_gats"
        assert c.get("ext_mg") == b"v-ext_mg"


def test_touch_can_shorten_and_zero_means_never(server):
    with server.connect() as c:
        assert c.set("shorten", b"x", exptime=1000) == b"STORED\r\n"
        assert c.set("never", b"y", exptime=1) == b"STORED\r\n"
        assert c.call(b"touch shorten 1\r\ntouch never 0\r\n") == b"TOUCHED\r\nTOUCHED\r\n"
        _wait_gone(c, "shorten", 5.0)
        assert c.get("never") == b"y"
        assert c.call(b"mg never t\r\n") == b"HD t-1\r\n"


def test_set_replaces_ttl(server):
    with server.connect() as c:
        assert c.set("rs", b"x", exptime=1) == b"STORED\r\n"
        assert c.set("rs", b"y", exptime=0) == b"STORED\r\n"
        assert c.set("rs_control", b"c", exptime=1) == b"STORED\r\n"
        _wait_gone(c, "rs_control", 5.0)
        assert c.get("rs") == b"y"
