"""keel only: hardware profiles (issue 12 item 3).

- Every profile shipped in hw-configs/ passes `keel-node --check-profile`; a profile with an
  unknown key, an impossible value or a missing key is refused with the key (and value) named,
  as starting a node with it would; the check binds no port and creates no data file.
- `keel-node tune` on a file writes a profile that passes the check, carries the measured
  figures in its comments with the values derived from them by the stated rules, and starts a
  node that answers a set and a get; it refuses an --out it cannot write, a device it cannot
  open and a size too small, before probing anything.
- Several devices: a node with two shards on two files (`--data a,b`) stores and reads keys,
  survives SIGKILL and a restart, writes a superblock naming each file's place, and refuses the
  files in the other order.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import HOST, KEEL_CORES, KEEL_NODE_BIN, REPO_ROOT, Server, port_block

pytestmark = pytest.mark.keel_only

HW_CONFIGS = REPO_ROOT / "hw-configs"
DEV_TOML = (HW_CONFIGS / "dev.toml").read_text()
RUN_TIMEOUT_S = 60


def keel(*args: str, timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    if not KEEL_NODE_BIN.exists():
        pytest.fail(f"keel-node binary not found at {KEEL_NODE_BIN}: run `cargo build --release`")
    return subprocess.run(
        [str(KEEL_NODE_BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def write_profile(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# --check-profile


def test_every_shipped_profile_passes_check_profile():
    shipped = sorted(HW_CONFIGS.glob("*.toml"))
    names = {p.name for p in shipped}
    # The glob must find the profiles the docs name, or this test would pass on nothing.
    assert {"dev.toml", "nvme1-16core.toml", "nvme4-32core.toml", "aws-i4i.4xlarge.toml"} <= names
    for p in shipped:
        r = keel("--check-profile", str(p))
        assert r.returncode == 0, f"{p.name}: {r.stderr}"
        assert r.stdout.splitlines()[0] == f"profile {p}: ok", r.stdout
        assert r.stderr == "", r.stderr


def test_the_four_device_profile_assigns_contiguous_shard_groups():
    r = keel("--check-profile", str(HW_CONFIGS / "nvme4-32core.toml"))
    assert r.returncode == 0, r.stderr
    for d, shards in enumerate(["0..7", "8..15", "16..23", "24..31"]):
        assert f"device /dev/nvme{d}n1: 3298534883328 bytes, shards {shards}" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "edit, message",
    [
        # An unknown key (a misspelt flush_delay_ms).
        (lambda t: t.replace("[raftlog]", "[raftlog]\nflush_delay = 5"), "unknown field `flush_delay`"),
        # An impossible value: the key, the value and the rule.
        (
            lambda t: t.replace("flush_delay_ms = 5", "flush_delay_ms = 0"),
            "raftlog.flush_delay_ms = 0: must be between 1 and 1000",
        ),
        (
            lambda t: t.replace("ring_depth = 128", "ring_depth = 100"),
            "io.ring_depth = 100: must be a power of two from 8 to 32768",
        ),
        # A missing key.
        (lambda t: re.sub(r"(?m)^ring_depth = .*\n", "", t), "missing field `ring_depth`"),
        # The one-device form before device.paths is refused, naming the key that replaced it.
        (
            lambda t: t.replace('paths = [".keel-data/keel.data"]', 'path = ".keel-data/keel.data"'),
            "unknown field `path`, expected `paths`",
        ),
        (
            lambda t: t.replace('paths = [".keel-data/keel.data"]', 'paths = ["a", "a"]'),
            'device.paths = ["a", "a"]: lists a device twice',
        ),
    ],
    ids=["unknown-key", "bad-value", "bad-ring-depth", "missing-key", "old-device-path", "same-device-twice"],
)
def test_check_profile_refuses_naming_the_key(tmp_path, edit, message):
    text = edit(DEV_TOML)
    assert text != DEV_TOML, "the edit must change the profile"
    p = write_profile(tmp_path / "bad.toml", text)
    r = keel("--check-profile", str(p))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "ok" not in r.stdout
    # Starting a node with it gives the same message.
    start = keel("--profile", str(p), "--print-profile")
    assert start.returncode == 2 and message in start.stderr, start.stderr


def test_check_profile_binds_no_port_and_creates_no_data_file(tmp_path):
    port = port_block(2)
    data = tmp_path / "data" / "keel.data"
    text = DEV_TOML.replace('"127.0.0.1:11211"', f'"{HOST}:{port}"')
    text = text.replace('metrics_listen = ""', f'metrics_listen = "{HOST}:{port + 1}"')
    text = text.replace('paths = [".keel-data/keel.data"]', f'paths = ["{data}"]')
    p = write_profile(tmp_path / "p.toml", text)
    # Both ports are held here while the check runs: a node binding either would fail
    # (keel-node binds with SO_REUSEPORT, these sockets without), so an ok proves it bound none.
    with socket.socket() as a, socket.socket() as b:
        a.bind((HOST, port))
        a.listen()
        b.bind((HOST, port + 1))
        b.listen()
        r = keel("--check-profile", str(p))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"profile {p}: ok"), r.stdout
    assert not data.parent.exists(), "the check created the data directory"


# --------------------------------------------------------------------------------------------
# tune


class ProfileServer(Server):
    """A keel-node started with a given profile and nothing overridden but the port."""

    def __init__(self, workdir: Path, profile: Path, extra: list[str] | None = None):
        super().__init__("keel", workdir)
        self.profile = profile
        self.extra = extra or []

    def command(self) -> list[str]:
        return [
            str(KEEL_NODE_BIN),
            "--profile",
            str(self.profile),
            "--listen",
            f"{HOST}:{self.port}",
            *self.extra,
        ]


def figures(text: str) -> dict:
    """The measured figures from a tuned profile's comments."""
    reads = {
        int(q): float(iops)
        for q, iops in re.findall(r"(?m)^#   random 4 KiB reads, QD (\d+): (\d+) IOPS \(p50 \d+ us, p99 \d+ us\)$", text)
    }
    bw = re.search(r"(?m)^#   sequential 1 MiB writes, 4 in flight, then fdatasync: ([\d.]+) MiB/s$", text)
    sync = re.search(r"(?m)^#   4 KiB write \+ fdatasync: p50 (\d+) us, p99 (\d+) us \((\d+) samples\)$", text)
    cpus = re.search(r"(?m)^#   CPUs online: (\S+) \((\d+)\)$", text)
    memlock = re.search(r"(?m)^#   RLIMIT_MEMLOCK: soft (.+), hard (.+)$", text)
    assert bw and sync and cpus and memlock, text
    return {
        "reads": reads,
        "write_mib_s": float(bw.group(1)),
        "sync_p50_us": int(sync.group(1)),
        "sync_p99_us": int(sync.group(2)),
        "sync_samples": int(sync.group(3)),
        "cpus": int(cpus.group(2)),
    }


def value(text: str, key: str) -> str:
    m = re.search(rf"(?m)^{key} = (.+)$", text)
    assert m, f"{key} missing"
    return m.group(1)


def test_tune_writes_a_profile_that_checks_and_starts_a_node(tmp_path):
    device = tmp_path / "dev.data"
    out = tmp_path / "tuned.toml"
    r = keel("tune", "--device", str(device), "--out", str(out), "--size-bytes", str(1 << 30), "--seconds", "0.2")
    assert r.returncode == 0, r.stderr
    assert f"{device} does not exist (or is empty): creating it with {1 << 30} bytes" in r.stderr, r.stderr
    assert r.stdout.strip() == f"profile {out}: written"
    text = out.read_text()

    check = keel("--check-profile", str(out))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"profile {out}: ok"), check.stdout

    f = figures(text)
    assert sorted(f["reads"]) == [1, 4, 16, 64, 128], text
    assert all(v > 0 for v in f["reads"].values()), f
    assert f["write_mib_s"] > 0 and f["sync_samples"] >= 1 and f["sync_p99_us"] >= f["sync_p50_us"] > 0, f
    # The derived values follow from the figures by the rules the comments state.
    best = max(f["reads"].values())
    sat = min(q for q, iops in f["reads"].items() if iops >= 0.9 * best)
    assert int(value(text, "ring_depth")) == min(max(1 << (2 * sat - 1).bit_length(), 64), 4096)
    assert int(value(text, "flush_delay_ms")) == min(max(math.ceil(f["sync_p99_us"] / 1000), 1), 1000)
    batch = int(value(text, "batch_bytes_max"))
    assert batch % 4096 == 0 and 4096 <= batch <= 1 << 20
    # The figure is printed to 0.1 MiB/s: allow that rounding.
    for mib_s in (f["write_mib_s"] - 0.05, f["write_mib_s"] + 0.05):
        expect = min(max(int(mib_s * (1 << 20) * f["sync_p50_us"] / 1e6) // 4096 * 4096, 4096), 1 << 20)
        if expect == batch:
            break
    else:
        pytest.fail(f"batch_bytes_max {batch} does not follow from {f}")
    assert value(text, "cores").count(",") + 1 == f["cpus"]
    assert value(text, "paths") == f'["{device.resolve()}"]'
    assert int(value(text, "size_bytes")) == 1 << 30

    node = ProfileServer(tmp_path / "node", out)
    node.workdir.mkdir()
    node.start()
    try:
        with node.connect() as c:
            assert c.set("tuned", b"value from a tuned profile") == b"STORED\r\n"
            assert c.get("tuned") == b"value from a tuned profile"
    finally:
        node.stop()
    assert node.proc.returncode == 0, node.log_text()

    # The device now holds the node's data: tune refuses to write over it.
    again = keel("tune", "--device", str(device), "--out", str(tmp_path / "again.toml"), "--seconds", "0.1")
    assert again.returncode == 2
    assert "block 0 holds a Keel superblock (a node's data)" in again.stderr, again.stderr
    assert not (tmp_path / "again.toml").exists()


@pytest.mark.parametrize(
    "case",
    ["out-in-missing-dir", "out-is-a-directory", "device-in-missing-dir", "size-too-small", "size-unaligned"],
)
def test_tune_refuses_before_probing(tmp_path, case):
    device = tmp_path / "dev.data"
    out = tmp_path / "tuned.toml"
    extra: list[str] = []
    if case == "out-in-missing-dir":
        out = tmp_path / "missing" / "tuned.toml"
        message = f"--out {out}: cannot write it: No such file or directory"
    elif case == "out-is-a-directory":
        out = tmp_path / "adir"
        out.mkdir()
        message = f"--out {out}: cannot write it: Is a directory"
    elif case == "device-in-missing-dir":
        device = tmp_path / "missing" / "dev.data"
        message = f"device {device}: cannot open it: No such file or directory"
    elif case == "size-too-small":
        extra = ["--size-bytes", str(8 << 20)]
        message = f"--size-bytes {8 << 20} is too small: a profile for this host's shards needs at least"
    else:
        extra = ["--size-bytes", "1000000"]
        message = "--size-bytes 1000000: must be a positive multiple of 4096"
    r = keel("tune", "--device", str(device), "--out", str(out), "--seconds", "0.1", *extra)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "probing" not in r.stderr, r.stderr
    if case != "out-is-a-directory":
        assert not out.exists(), "a failed tune left its --out behind"
    if case != "device-in-missing-dir":
        assert not device.exists() or device.stat().st_size == 0, "a refused tune sized the device"


# --------------------------------------------------------------------------------------------
# Several devices


DEV_MAGIC = b"KEELDEV1"


def superblock(path: Path) -> dict:
    with open(path, "rb") as f:
        b = f.read(76)
    assert b[:8] == DEV_MAGIC, b[:16]
    version, shards = struct.unpack_from("<II", b, 8)
    device_index, device_count, first_shard, node_shards = struct.unpack_from("<IIII", b, 56)
    return {
        "version": version,
        "shards": shards,
        "device_index": device_index,
        "device_count": device_count,
        "first_shard": first_shard,
        "node_shards": node_shards,
    }


def test_two_shards_on_two_files_store_read_and_survive_sigkill(tmp_path):
    cores = [c for c in KEEL_CORES.split(",") if c]
    if len(cores) < 2 and "-" not in KEEL_CORES:
        pytest.skip("needs two shards (KEEL_E2E_CORES lists one CPU)")
    a, b = tmp_path / "a.data", tmp_path / "b.data"
    node = ProfileServer(
        tmp_path / "node", HW_CONFIGS / "dev.toml", ["--cores", "0,1", "--data", f"{a},{b}"]
    )
    node.workdir.mkdir()
    node.start()
    keys = {f"twodev:{i}".encode(): f"value {i} ".encode() * (1 + i % 7) for i in range(400)}
    try:
        with node.connect() as c:
            for k, v in keys.items():
                assert c.set(k, v) == b"STORED\r\n"
            for k, v in keys.items():
                assert c.get(k) == v
        # Each file is one device with its own superblock, holding one shard.
        assert superblock(a) == {
            "version": 3, "shards": 1, "device_index": 0, "device_count": 2, "first_shard": 0, "node_shards": 2,
        }
        assert superblock(b) == {
            "version": 3, "shards": 1, "device_index": 1, "device_count": 2, "first_shard": 1, "node_shards": 2,
        }
        log = node.log_text()
        assert f"shard 0 on CPU 0, device {a}" in log and f"shard 1 on CPU 1, device {b}" in log, log
        # Both devices took writes: each file holds some of the values (keys hash to both shards).
        for path in (a, b):
            with open(path, "rb") as f:
                blob = f.read(64 << 20)
            assert b"value 1" in blob, f"{path} holds none of the values"

        node.crash_and_restart()
        with node.connect() as c:
            for k, v in keys.items():
                assert c.get(k) == v, k
    finally:
        node.stop()

    # The order is part of the data: swapped, the node refuses to start.
    swapped = keel("--profile", str(HW_CONFIGS / "dev.toml"), "--cores", "0,1", "--data", f"{b},{a}",
                   "--listen", f"{HOST}:{node.port}", timeout_s=30)
    assert swapped.returncode == 1, swapped.stderr
    assert f"device {b}: it was formatted for node 1, device 1 of 2 holding shards 1..1 of 2" in swapped.stderr, swapped.stderr
    assert "but the profile asks for node 1, device 0 of 2 holding shards 0..0 of 2" in swapped.stderr
