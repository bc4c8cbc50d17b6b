"""A real client library (pymemcache) running a seeded mixed workload over several connections
in threads, each thread owning its keys and keeping a model dict; every value read back is
checked against the model."""

from __future__ import annotations

import random
import threading

import pytest
from pymemcache.client.base import Client

THREADS = 4
OPS_PER_THREAD = 5000  # 20k ops in all


def _client(server) -> Client:
    return Client(("127.0.0.1", server.port), connect_timeout=5, timeout=10, no_delay=True,
                  default_noreply=False)


def _worker(server, tid: int, errors: list):
    rng = random.Random(1000 + tid)
    c = _client(server)
    model: dict[str, bytes] = {}
    keys = [f"py:{tid}:{i}" for i in range(200)]
    counts = {}
    try:
        for n in range(OPS_PER_THREAD):
            k = rng.choice(keys)
            op = rng.choices(["set", "get", "get_many", "delete", "incr", "cas", "add", "append"],
                             weights=[25, 30, 10, 8, 10, 8, 5, 4])[0]
            counts[op] = counts.get(op, 0) + 1
            if op == "set":
                v = rng.randbytes(rng.randrange(0, 300)) if rng.random() < 0.5 else b"%d" % rng.randrange(10**6)
                assert c.set(k, v) is True
                model[k] = v
            elif op == "get":
                assert c.get(k) == model.get(k), (op, k)
            elif op == "get_many":
                ks = rng.sample(keys, 20)
                got = c.get_many(ks)
                assert got == {x: model[x] for x in ks if x in model}
            elif op == "delete":
                assert c.delete(k, noreply=False) is (k in model)
                model.pop(k, None)
            elif op == "incr":
                d = rng.randrange(0, 1000)
                cur = model.get(k)
                if cur is None:
                    assert c.incr(k, d, noreply=False) is None
                elif cur.strip().isdigit():
                    want = (int(cur) + d) % (1 << 64)
                    assert c.incr(k, d, noreply=False) == want
                    # memcached pads a shorter result; +d never shortens, so digits are exact.
                    model[k] = b"%d" % want
                else:
                    with pytest.raises(Exception):
                        c.incr(k, d, noreply=False)
            elif op == "cas":
                got, token = c.gets(k)
                assert got == model.get(k)
                if got is None:
                    assert token is None
                    continue
                v = b"cas-%d" % n
                if rng.random() < 0.3:
                    # Someone else writes first: the cas must fail and leave their value.
                    assert c.set(k, b"other") is True
                    model[k] = b"other"
                    assert c.cas(k, v, token, noreply=False) is False
                else:
                    assert c.cas(k, v, token, noreply=False) is True
                    model[k] = v
            elif op == "add":
                v = b"add-%d" % n
                assert c.add(k, v, noreply=False) is (k not in model)
                model.setdefault(k, v)
            elif op == "append":
                ok = c.append(k, b"+", noreply=False)
                assert ok is (k in model)
                if ok:
                    model[k] += b"+"
        # A final full read-back of this thread's keys.
        got = c.get_many(keys)
        assert got == {x: model[x] for x in keys if x in model}
    except BaseException as e:
        errors.append((tid, e))
    finally:
        c.close()


def test_pymemcache_mixed_workload(server):
    errors: list = []
    threads = [threading.Thread(target=_worker, args=(server, t, errors), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "workload did not finish within 120 s"
    assert not errors, errors[0]


def test_pymemcache_basic_api(server):
    c = _client(server)
    try:
        assert c.version()
        assert c.set("pyb", b"1", expire=100, noreply=False) is True
        assert c.touch("pyb", 200, noreply=False) is True
        assert c.touch("pyb_missing", 200, noreply=False) is False
        assert c.incr("pyb", 41) == 42
        assert c.decr("pyb", 50) == 0
        # memcached rewrites "42" -> "0 " in place (space padded); exact digits are fine too.
        assert c.get("pyb") in (b"0", b"0 ")
        assert c.replace("pyb_missing", b"x", noreply=False) is False
        assert c.prepend("pyb", b"9", noreply=False) is True
        assert c.get("pyb") in (b"90", b"90 ")
        c.set_many({"pym1": b"a", "pym2": b"b"}, noreply=False)
        assert c.get_many(["pym2", "nope", "pym1"]) == {"pym1": b"a", "pym2": b"b"}
        c.delete_many(["pym1", "pym2"], noreply=False)
        assert c.get_many(["pym1", "pym2"]) == {}
        stats = c.stats()
        assert b"curr_items" in stats or "curr_items" in stats
    finally:
        c.close()
