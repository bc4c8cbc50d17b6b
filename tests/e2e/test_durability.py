"""keel only: acknowledged writes survive SIGKILL, and damaged records on disk are detected,
counted and never served.

memcached keeps nothing across a restart, so these tests are skipped on it (marker keel_only).

Crash (STYLE habit 5, issue 4 "a set is answered only after its flush completes"): every key whose
set was answered STORED before the SIGKILL reads back with exactly that value after the restart,
and every delete answered DELETED stays deleted. Writes in flight at the kill (sent, not answered)
may land or not, but never as other bytes.

Corruption: bytes are flipped inside value bytes found by scanning the data file for the values
the test wrote (no dependence on the on-disk format). After a restart each key returns its exact
value or a miss, never wrong bytes; the undamaged keys are served; `stats` counts the damage in
`keel_corrupt_records`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import re
import subprocess
import time

import pytest

from conftest import free_port

pytestmark = pytest.mark.keel_only

CRASH_CYCLES = int(os.environ.get("KEEL_CRASH_CYCLES", "3"))
CRASH_KEYS = int(os.environ.get("KEEL_CRASH_KEYS", "2000"))
BATCH = 100


def _crash_value(i: int, cycle: int) -> bytes:
    """Derived from key and cycle, lengths 20..~1 KB, so a stale or mixed-up value is caught."""
    h = hashlib.sha256(b"%d/%d" % (i, cycle)).hexdigest().encode()
    return b"v%d.c%d." % (i, cycle) + h * (i % 16)


def _set_batch(c, items: list[tuple[bytes, bytes]]) -> None:
    c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items))
    for k, _ in items:
        line = c.read_line(timeout_s=30)
        assert line == b"STORED\r\n", (k, line)


def _get_many(c, keys: list[bytes]) -> dict[bytes, bytes]:
    """Multi-get in batches; returns the hits. Checks framing strictly."""
    out: dict[bytes, bytes] = {}
    for at in range(0, len(keys), BATCH):
        chunk = keys[at : at + BATCH]
        c.send(b"get " + b" ".join(chunk) + b"\r\n")
        while True:
            line = c.read_line(timeout_s=30)
            if line == b"END\r\n":
                break
            parts = line.split()
            assert len(parts) == 4 and parts[0] == b"VALUE", line
            assert parts[1] in chunk, line
            data = c.read_exact(int(parts[3]) + 2, timeout_s=30)
            assert data.endswith(b"\r\n")
            out[parts[1]] = data[:-2]
    return out


def _check_model(c, model: dict[bytes, bytes | None], cycle: int) -> None:
    got = _get_many(c, list(model))
    lost = [k for k, v in model.items() if v is not None and k not in got]
    wrong = [k for k, v in model.items() if v is not None and k in got and got[k] != v]
    resurrected = [k for k, v in model.items() if v is None and k in got]
    assert not wrong, f"cycle {cycle}: {len(wrong)} keys read back wrong bytes, e.g. {wrong[:5]}"
    assert not lost, f"cycle {cycle}: {len(lost)} acked keys lost after SIGKILL, e.g. {lost[:5]}"
    assert not resurrected, f"cycle {cycle}: {len(resurrected)} acked deletes undone, e.g. {resurrected[:5]}"


def test_crash_durability_acked_writes_survive_sigkill(keel_node):
    rng = random.Random(42)
    model: dict[bytes, bytes | None] = {}
    keys = [b"crash:%06d" % i for i in range(CRASH_KEYS)]
    for cycle in range(CRASH_CYCLES):
        with keel_node.connect() as c:
            # Overwrite every key with this cycle's value (the first cycle creates them).
            order = list(range(CRASH_KEYS))
            rng.shuffle(order)
            for at in range(0, len(order), BATCH):
                items = [(keys[i], _crash_value(i, cycle)) for i in order[at : at + BATCH]]
                _set_batch(c, items)
                model.update(items)
            # Delete ~5% of the keys, each acknowledged.
            for i in rng.sample(range(CRASH_KEYS), CRASH_KEYS // 20):
                c.send(b"delete %s\r\n" % keys[i])
                assert c.read_line() == b"DELETED\r\n"
                model[keys[i]] = None
            # One more acked write right before the kill: the newest ack must survive too.
            last = (keys[0], b"last-before-kill-%d" % cycle)
            _set_batch(c, [last])
            model[last[0]] = last[1]
        keel_node.crash_and_restart()
        with keel_node.connect() as c:
            _check_model(c, model, cycle)
            assert int(c.stats()["curr_items"]) == sum(v is not None for v in model.values())


def test_crash_with_writes_in_flight(keel_node):
    """Sets sent but not yet answered when SIGKILL lands may be lost, never garbled; acked ones stay."""
    n = 1500
    old = {b"fly:%05d" % i: b"old-%d" % i for i in range(n)}
    new = {k: b"new-" + hashlib.sha256(k).hexdigest().encode() * 4 for k in old}
    with keel_node.connect() as c:
        items = list(old.items())
        for at in range(0, n, BATCH):
            _set_batch(c, items[at : at + BATCH])
        keys = list(old)
        _set_batch(c, [(k, new[k]) for k in keys[:500]])  # acked overwrites
        # In flight: sent in one go, not read; the kill follows at once.
        c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(new[k]), new[k]) for k in keys[500:]))
        keel_node.kill()
    keel_node.start()
    with keel_node.connect() as c:
        got = _get_many(c, keys)
    for k in keys[:500]:
        assert got.get(k) == new[k], k
    for k in keys[500:]:
        assert got.get(k) in (old[k], new[k]), (k, got.get(k, b"<miss>")[:60])


# ----------------------------------------------------------------------------------- corruption

MARK = b"KEELCORRUPTTEST|"
VALUE_LEN = 600


def _wait_stat(c, name: str, ok, timeout_s: float) -> int:
    """Polls `stats` until `ok(value of name)` (a bounded wait on an event, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = int(c.stats()[name])
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


RESTART_KEYS = int(os.environ.get("KEEL_RESTART_KEYS", "1000000"))


def _set_all(c, items: list[tuple[bytes, bytes]]) -> None:
    """Like _set_batch, reading the replies in one piece (a million keys: minutes otherwise)."""
    c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in items))
    replies = c.read_exact(8 * len(items), timeout_s=30)
    assert replies == b"STORED\r\n" * len(items), replies[:200]


def _check_all(c, model: dict[bytes, bytes | None]) -> None:
    """Every key of `model` reads back as it says: multi-gets of 1,000 keys, each reply parsed
    in one piece (this test's values never contain END)."""
    keys = list(model)
    got: dict[bytes, bytes] = {}
    for at in range(0, len(keys), 1000):
        chunk = keys[at : at + 1000]
        c.send(b"get " + b" ".join(chunk) + b"\r\n")
        reply = c.read_until(b"END\r\n", timeout_s=30)
        lines = reply.split(b"\r\n")
        assert lines[-2:] == [b"END", b""], reply[-100:]
        for head, value in zip(lines[0:-2:2], lines[1:-2:2]):
            _, key, _, n = head.split(b" ")
            assert len(value) == int(n), head
            got[key] = value
    wrong = [k for k, v in model.items() if got.get(k) != v]
    assert not wrong, f"{len(wrong)} keys read back wrong or lost, e.g. {wrong[:5]}"


def test_a_restart_loads_the_index_checkpoint_and_serves_every_key(keel_node):
    """Issue 15 item 2: a SIGKILLed node loads its last index checkpoint and replays only the
    log after it (before, a restart scanned every segment: its time grew with the data). The
    profile takes checkpoints often enough for the test; every key is then checked, including
    the writes made after the checkpoint."""
    text = keel_node.profile.read_text()
    for key, value in (("index_checkpoint_records_min", "50_000"),
                       ("index_checkpoint_interval_ms", "2_000")):
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    keel_node.profile = keel_node.workdir / "profile.toml"
    keel_node.profile.write_text(text)
    keel_node.restart()
    n = RESTART_KEYS
    model: dict[bytes, bytes | None] = {}
    with keel_node.connect() as c:
        for at in range(0, n, 1000):
            items = [(b"r:%07d" % i, b"%d" % (i * 7)) for i in range(at, min(n, at + 1000))]
            _set_all(c, items)
            model.update(items)
        covered = _wait_stat(c, "keel_index_checkpoint_entries", lambda v: v == n, 120)
        assert covered == n, f"the checkpoints hold {covered} of {n} keys"
        # After the checkpoint: replayed from the log at the restart.
        after = [(b"r:%07d" % i, b"after-%d" % i) for i in range(0, n, n // 500)]
        _set_batch(c, after)
        model.update(after)
        for i in range(3, n, n // 200):
            c.send(b"delete r:%07d\r\n" % i)
            assert c.read_line() == b"DELETED\r\n"
            model[b"r:%07d" % i] = None
    keel_node.kill()
    t0 = time.monotonic()
    keel_node.start()
    restart_s = time.monotonic() - t0
    print(f"restart after SIGKILL with {n} keys: {restart_s:.2f} s to accept")
    with keel_node.connect() as c:
        st = c.stats()
        print("recovery:", {k: st[k] for k in ("keel_recovery_ms", "keel_recovered_records",
                                               "keel_index_checkpoint_loaded")})
        assert int(st["keel_index_checkpoint_loaded"]) >= 1, st
        assert int(st["keel_index_checkpoints_refused"]) == 0, st
        assert int(st["keel_recovered_records"]) < n // 10, "replayed far more than came after"
        _check_all(c, model)
        # Counted only now: the Raft groups may still be applying the last writes from their
        # log when the node accepts (a read waits for them; the first stats did not).
        st = c.stats()
        assert int(st["curr_items"]) == sum(v is not None for v in model.values()), st
        assert int(st["keel_corrupt_records"]) == 0, st


def _corrupt_value(i: int) -> bytes:
    body = MARK + b"%06d|" % i
    fill = hashlib.sha256(b"corrupt/%d" % i).hexdigest().encode()
    return (body + fill * (VALUE_LEN // len(fill) + 1))[:VALUE_LEN]


def _write_corruption_keys(node, n: int) -> dict[bytes, bytes]:
    values = {b"cor:%06d" % i: _corrupt_value(i) for i in range(n)}
    with node.connect() as c:
        items = list(values.items())
        for at in range(0, n, BATCH):
            _set_batch(c, items[at : at + BATCH])
    return values


def _scan_values(path, values: dict[bytes, bytes]) -> dict[bytes, list[int]]:
    """Offsets in the data file where each value's bytes appear whole (one pass over MARK hits)."""
    by_id = {v[len(MARK) : len(MARK) + 6]: k for k, v in values.items()}
    found: dict[bytes, list[int]] = {k: [] for k in values}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        hits = 0
        for start, end in _data_extents(f.fileno(), len(m)):
            pos = start
            while hits < len(values) * 50:  # bounded: a value is not expected 50 times
                pos = m.find(MARK, pos, end)
                if pos < 0:
                    break
                hits += 1
                key = by_id.get(m[pos + len(MARK) : pos + len(MARK) + 6])
                if key is not None and m[pos : pos + VALUE_LEN] == values[key]:
                    found[key].append(pos)
                pos += len(MARK)
    return found


SCAN_BYTES_MAX = int(os.environ.get("KEEL_E2E_SCAN_BYTES_MAX", str(8 << 30)))


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The file's data extents (holes skipped: a sparse multi-GiB data file scans quickly), up to
    SCAN_BYTES_MAX bytes in all. Falls back to the whole file where SEEK_DATA is unsupported."""
    out, pos, total = [], 0, 0
    try:
        for _ in range(1_000_000):  # bounded
            if pos >= size or total >= SCAN_BYTES_MAX:
                break
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size, start + SCAN_BYTES_MAX - total)
            out.append((start, end))
            total += end - start
            pos = end
    except (AttributeError, OSError):
        return [(0, min(size, SCAN_BYTES_MAX))]
    return out


def _read_all_checked(node, values: dict[bytes, bytes]) -> tuple[int, dict]:
    """Every key is its exact value or a miss. Returns (hits, stats)."""
    with node.connect() as c:
        got = _get_many(c, list(values))
        # The meta path must not serve damaged bytes either.
        sample = list(values)[:: max(1, len(values) // 50)]
        for k in sample:
            c.send(b"mg %s v\r\n" % k)
            line = c.read_line()
            if line != b"EN\r\n":
                assert line == b"VA %d\r\n" % VALUE_LEN, line
                assert c.read_exact(VALUE_LEN + 2) == values[k] + b"\r\n", k
        stats = c.stats()
    wrong = [k for k, v in got.items() if v != values[k]]
    assert not wrong, f"{len(wrong)} keys served wrong bytes after corruption, e.g. {wrong[:5]}"
    return len(got), stats


def test_flipped_bytes_detected_and_not_served(keel_node):
    n = 1000
    values = _write_corruption_keys(keel_node, n)
    keel_node.stop()
    path = keel_node.data_path
    found = _scan_values(path, values)
    present = [k for k, offs in found.items() if offs]
    assert len(present) >= n * 0.9, (
        f"only {len(present)}/{n} values found whole in {path}: the test expects values stored "
        "uncompressed and contiguous")
    rng = random.Random(1234)
    victims = rng.sample(present, 12)
    with open(path, "r+b") as f:
        for k in victims:
            for off in found[k]:  # every copy, so no intact copy can hide the damage
                at = off + rng.randrange(len(MARK) + 8, VALUE_LEN)
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
    keel_node.start()
    hits, stats = _read_all_checked(keel_node, values)
    victims_set = set(victims)
    untouched = [k for k in values if k not in victims_set]
    with keel_node.connect() as c:
        got = _get_many(c, untouched)
    # Records are framed by length, and only value bytes were flipped, so the framing of every
    # other record is intact: nearly all undamaged keys must still be served.
    assert len(got) >= len(untouched) * 0.95, f"only {len(got)}/{len(untouched)} undamaged keys served"
    assert "keel_corrupt_records" in stats, "stats lacks keel_corrupt_records"
    assert int(stats["keel_corrupt_records"]) > 0, "flipped records were not counted"
    # The node keeps working normally after recovery.
    with keel_node.connect() as c:
        assert c.set(victims[0], b"rewritten") == b"STORED\r\n"
        assert c.get(victims[0]) == b"rewritten"


def test_zeroed_tail_of_written_region(keel_node):
    """The last 8 KiB of what was written are zeroed (a torn tail): the node starts, serves no
    wrong bytes, and keeps the records that lie well before the damage."""
    n = 1000
    values = _write_corruption_keys(keel_node, n)
    keel_node.stop()
    path = keel_node.data_path
    found = _scan_values(path, values)
    ends = [off + VALUE_LEN for offs in found.values() for off in offs]
    assert ends, "no written values found in the data file"
    end = max(ends)
    zero_from = max(0, end - 8192)
    with open(path, "r+b") as f:
        f.seek(zero_from)
        f.write(b"\0" * (end - zero_from))
        f.flush()
        os.fsync(f.fileno())
    keel_node.start()
    hits, _ = _read_all_checked(keel_node, values)
    # Keys with a copy wholly before the zeroed range (with 64 KiB to spare for block/segment
    # granularity) must survive.
    safe = [k for k, offs in found.items() if offs and max(offs) + VALUE_LEN < zero_from - 65536]
    with keel_node.connect() as c:
        got = _get_many(c, safe)
    assert len(got) >= len(safe) * 0.95, f"only {len(got)}/{len(safe)} keys before the torn tail served"
    assert hits >= len(safe) * 0.95


def test_restart_after_graceful_stop_keeps_everything(keel_node):
    """SIGTERM then start: every key, flag and TTL'd item is back."""
    with keel_node.connect() as c:
        for i in range(300):
            assert c.set(b"g:%d" % i, b"gv%d" % i, flags=i) == b"STORED\r\n"
        assert c.set("g:ttl", b"t", exptime=1000) == b"STORED\r\n"
        assert c.set("g:gone", b"x", exptime=-1) == b"STORED\r\n"
    keel_node.restart()
    with keel_node.connect() as c:
        for i in range(300):
            c.send(b"get g:%d\r\n" % i)
            assert c.read_until(b"END\r\n") == b"VALUE g:%d %d %d\r\ngv%d\r\nEND\r\n" % (
                i, i, len(b"gv%d" % i), i)
        assert c.get("g:gone") is None
        c.send(b"mg g:ttl t v\r\n")
        line = c.read_line()
        assert line.startswith(b"VA 1 t") and 990 <= int(line.split(b"t")[1]) <= 1000, line


def test_a_second_node_on_the_same_data_file_is_refused(keel_node):
    """Two processes on one data file would write over each other (and SO_REUSEPORT would even
    let them share the port): the second exits at once, naming the file, and the first is intact."""
    with keel_node.connect() as c:
        assert c.set("lock:k", b"v") == b"STORED\r\n"
    cmd = keel_node.command()
    cmd[cmd.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
    second = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert second.returncode == 1, second
    assert b"is in use by another process" in second.stderr, second.stderr
    with keel_node.connect() as c:
        assert c.get("lock:k") == b"v"


def test_a_second_node_on_a_port_in_use_is_refused(keel_node, tmp_path):
    """The shards listen with SO_REUSEPORT, which would let a second node (its own data file,
    the same port) quietly take half of the first one's clients: a bench once read keys from a
    forgotten node this way. The second exits at once naming the address; the first serves on."""
    with keel_node.connect() as c:
        assert c.set("port:k", b"v") == b"STORED\r\n"
    cmd = keel_node.command()
    cmd[cmd.index("--data") + 1] = str(tmp_path / "other.data")
    second = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert second.returncode == 1, second
    assert f"cannot listen on {keel_node.addr}".encode() in second.stderr, second.stderr
    assert b"another process is listening there" in second.stderr, second.stderr
    assert not (tmp_path / "other.data").exists(), "refused before creating its data file"
    for _ in range(20):  # every new connection still reaches the first node
        with keel_node.connect() as c:
            assert c.get("port:k") == b"v"
