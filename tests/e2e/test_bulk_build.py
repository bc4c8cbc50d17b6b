"""keel-bulk build and verify, run as a pipeline would: real TSV and Parquet files (Parquet written
by pyarrow, as Spark-like pipelines write it), the real binary, its exit codes and messages.

The built files are read back by `read_built`, an independent reader written from the formats
docs/design.md draws ("Bulk-built tables"), not from keel's code: every key must come back with
its value, in its partition, and the manifest's checksums must match.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from conftest import KEEL_NODE_BIN

import pyarrow as pa
import pyarrow.parquet as pq

pytestmark = pytest.mark.keel_only

KEEL_BULK_BIN = Path(os.environ.get("KEEL_BULK_BIN", KEEL_NODE_BIN.parent / "keel-bulk"))
BLOCK = 4096


def crc32c(data: bytes, crc: int = 0) -> int:
    """crc32c (Castagnoli), bit by bit over a table: slow, independent of keel's code."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_TABLE = _table()


def bulk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if not KEEL_BULK_BIN.exists():
        pytest.fail(f"keel-bulk not found at {KEEL_BULK_BIN}: run `cargo build --release`")
    return subprocess.run(
        [str(KEEL_BULK_BIN), *args], capture_output=True, text=True, timeout=timeout
    )


def tsv_escape(b: bytes) -> bytes:
    return (
        b.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    )


def read_built(d: Path, check_crc_of: int = 2) -> dict[bytes, bytes | None]:
    """Every key of a built directory: value bytes, or None for a deletion. Checks the crc32c of
    the first `check_crc_of` partitions' files against the manifest (the pure-Python crc is slow)."""
    m = json.loads((d / "manifest.json").read_text())
    out: dict[bytes, bytes | None] = {}
    for f in m["files"]:
        seg = (d / f["seg"]).read_bytes()
        idx = (d / f["idx"]).read_bytes()
        assert len(seg) == f["seg_bytes"] and len(idx) == f["idx_bytes"]
        if f["partition"] < check_crc_of:
            assert crc32c(seg) == f["seg_crc32c"]
            assert crc32c(idx) == f["idx_crc32c"]
        # Each segment opens with KEELTBL1, its number, version 1, partition, partitions, build id.
        for s in range(0, len(seg), m["segment_bytes"]):
            magic, seg_no, ver, part, parts, build_id = struct.unpack_from("<8sIIIIQ", seg, s)
            assert (magic, ver, part, parts, build_id) == (
                b"KEELTBL1", 1, f["partition"], m["partitions"], m["build_id"]
            )
            assert seg_no == s // m["segment_bytes"]
        at, n = 0, 0
        while True:
            (magic, _seg_no, ver, gen, _base, _end, part_no, parts, entries, data_bytes, data_crc) = (
                struct.unpack_from("<8sIIQQQIIIII", idx, at)
            )
            assert (magic, ver, gen, part_no) == (b"KEELIDX1", 1, m["build_id"], n)
            data = idx[at + BLOCK : at + BLOCK + data_bytes]
            e = 0
            for _ in range(entries):
                key_len, bits = struct.unpack_from("<HB", data, e)
                offset, _cas, value_len = struct.unpack_from("<QQI", data, e + 6)
                key = data[e + 34 : e + 34 + key_len]
                e += 34 + key_len
                # The record: magic KRec, crc, seq, cas, value_len, flags, exptime, time, key_len, kind.
                rmagic, _crc, _seq, _rcas, rvlen, _fl, _exp, _t, rklen, kind = struct.unpack_from(
                    "<4sIQQIIIIHB", seg, offset
                )
                assert (rmagic, rvlen, rklen) == (b"KRec", value_len, key_len)
                rkey = seg[offset + 48 : offset + 48 + key_len]
                assert rkey == key
                value = seg[offset + 48 + key_len : offset + 48 + key_len + value_len]
                deleted = bool(bits & 8)
                assert kind == (2 if deleted else 1)
                assert key not in out
                out[key] = None if deleted else value
            assert e == len(data)
            at += BLOCK + (data_bytes + BLOCK - 1) // BLOCK * BLOCK
            n += 1
            if parts:
                assert parts == n and at == len(idx)
                break
    return out


def make_rows(n: int, seed: int = 0) -> list[tuple[bytes, bytes | None]]:
    rows = []
    for i in range(n):
        key = f"user:{i:06d}".encode()
        if i % 50 == 7:
            rows.append((key, None))
        else:
            rows.append((key, f"v{seed}-{i}\t\n\\".encode() + bytes([i % 256]) * (i % 300)))
    return rows


def write_tsv(path: Path, rows) -> None:
    with open(path, "wb") as f:
        for k, v in rows:
            f.write(tsv_escape(k) + b"\t" + (b"\\N" if v is None else tsv_escape(v)) + b"\n")


def write_parquet(path: Path, rows, row_group_size: int = 3000, compression: str = "snappy") -> None:
    table = pa.table(
        {
            "key": pa.array([k.decode() for k, _ in rows], pa.string()),
            "value": pa.array([v for _, v in rows], pa.binary()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size, compression=compression)


def test_tsv_and_parquet_builds_hold_the_same_table(tmp_path):
    rows = make_rows(20000)
    write_tsv(tmp_path / "in.tsv", rows)
    # A pipeline's output directory: part files and a _SUCCESS marker.
    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "part-0.parquet", rows[:9000], compression="snappy")
    write_parquet(tmp_path / "pq" / "part-1.parquet", rows[9000:], compression="zstd")
    (tmp_path / "pq" / "_SUCCESS").write_bytes(b"")
    r = bulk("build", "--table", "feat", "--input", str(tmp_path / "in.tsv"), "--format", "tsv",
             "--out", str(tmp_path / "tsv-v1"), "--partitions", "8")
    assert r.returncode == 0, r.stderr
    assert "20000 keys (400 deletions), 8 partitions" in r.stdout
    r = bulk("build", "--table", "feat", "--input", str(tmp_path / "pq"), "--format", "parquet",
             "--out", str(tmp_path / "pq-v1"), "--partitions", "8", "--threads", "2")
    assert r.returncode == 0, r.stderr
    want = dict(rows)
    assert read_built(tmp_path / "tsv-v1") == want
    assert read_built(tmp_path / "pq-v1") == want
    for d in ("tsv-v1", "pq-v1"):
        r = bulk("verify", str(tmp_path / d))
        assert r.returncode == 0, r.stderr
        assert "ok, 20000 keys (400 deletions)" in r.stdout
    m = json.loads((tmp_path / "pq-v1" / "manifest.json").read_text())
    assert [i["records"] for i in m["inputs"]] == [9000, 11000]
    assert m["table"] == "feat" and m["partitions"] == 8


def test_bad_inputs_fail_with_file_line_and_reason_and_leave_nothing(tmp_path):
    out = tmp_path / "v1"
    cases = [
        (b"a\t1\nb 2\n", "in.tsv:2: no TAB between the key and the value"),
        (b"a\t1\nb\t2\tx\n", "in.tsv:2: a second TAB"),
        (b"a\t1\r\n", "in.tsv:1: a raw CR"),
        (b"a\t1\n\nb\t2\n", "in.tsv:2: empty line"),
        (b"a\t\\q\n", "in.tsv:1: the value: byte 0: unknown escape \\q"),
        (b"bad key\t1\n", "in.tsv:1: key \"bad key\" holds byte 0x20"),
        (b"a\t1\na\t2\n", "key \"a\" is in the input twice"),
    ]
    for text, why in cases:
        (tmp_path / "in.tsv").write_bytes(text)
        r = bulk("build", "--table", "t", "--input", str(tmp_path / "in.tsv"), "--format", "tsv",
                 "--out", str(out))
        assert r.returncode == 1, (text, r.stdout)
        assert why in r.stderr, (text, r.stderr)
        assert r.stderr.startswith("keel-bulk: ")
        assert not out.exists() and not (tmp_path / "v1.partial").exists()
    # A truncated Parquet file (its footer cut off) is refused before anything is written.
    write_parquet(tmp_path / "in.parquet", make_rows(1000))
    whole = (tmp_path / "in.parquet").read_bytes()
    (tmp_path / "in.parquet").write_bytes(whole[: len(whole) * 2 // 3])
    r = bulk("build", "--table", "t", "--input", str(tmp_path / "in.parquet"), "--format",
             "parquet", "--out", str(out))
    assert r.returncode == 1 and "not a readable Parquet file" in r.stderr, r.stderr
    assert not out.exists()
    # A bad flag value is refused by name.
    r = bulk("build", "--table", "t", "--input", str(tmp_path / "in.tsv"), "--format", "csv",
             "--out", str(out))
    assert r.returncode != 0 and "csv" in r.stderr


def test_verify_refuses_a_damaged_build(tmp_path):
    write_tsv(tmp_path / "in.tsv", make_rows(3000))
    d = tmp_path / "v1"
    assert bulk("build", "--table", "t", "--input", str(tmp_path / "in.tsv"), "--format", "tsv",
                "--out", str(d), "--partitions", "4").returncode == 0
    seg = d / "part-00002.seg"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    r = bulk("verify", str(d))
    assert r.returncode == 1
    assert "part-00002.seg: checksum mismatch" in r.stderr, r.stderr


def test_a_killed_build_leaves_no_valid_looking_directory_and_a_rerun_succeeds(tmp_path):
    # ~60 MB of input, so the build is still running when it is killed.
    rows = [(f"k{i:08d}".encode(), b"x" * 600) for i in range(100_000)]
    write_tsv(tmp_path / "in.tsv", rows)
    out = tmp_path / "v1"
    args = [str(KEEL_BULK_BIN), "build", "--table", "t", "--input", str(tmp_path / "in.tsv"),
            "--format", "tsv", "--out", str(out)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp_path / "v1.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert p.poll() is None, "the build ended before it could be killed (grow the input)"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert not out.exists(), "a killed build left its final directory"
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "v1.partial").exists()
    got = read_built(out, check_crc_of=0)
    assert len(got) == 100_000 and got[b"k00012345"] == b"x" * 600
    assert bulk("verify", str(out)).returncode == 0
