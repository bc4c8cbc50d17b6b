"""Black-box end-to-end harness for keel-node (and real memcached, the reference).

Target selection: env KEEL_E2E_TARGET = "keel" (default) or "memcached".

Every server this module starts runs on 127.0.0.1 on a free port, is waited for with a bounded
retry, and is stopped by its own PID. Every socket read has a timeout; nothing here sleeps to wait
for a reply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

TARGET = os.environ.get("KEEL_E2E_TARGET", "keel").strip().lower()
if TARGET not in ("keel", "memcached"):
    raise pytest.UsageError(f"KEEL_E2E_TARGET={TARGET!r}: must be 'keel' or 'memcached'")

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEL_NODE_BIN = Path(os.environ.get("KEEL_NODE_BIN", REPO_ROOT / "target" / "release" / "keel-node"))
KEEL_PROFILE = REPO_ROOT / "hw-configs" / "dev.toml"
KEEL_CORES = os.environ.get("KEEL_E2E_CORES", "0,1")
MEMCACHED_BIN = os.environ.get("MEMCACHED_BIN", "memcached")
# keel-node's device backend: "io_uring", or "spdk" for a keel-node built with --features spdk
# (scripts/test-spdk): each node's data file is then an SPDK aio bdev named SPDK_BDEV.
BACKEND = os.environ.get("KEEL_E2E_BACKEND", "io_uring")
if BACKEND not in ("io_uring", "spdk"):
    raise pytest.UsageError(f"KEEL_E2E_BACKEND={BACKEND!r}: must be 'io_uring' or 'spdk'")
SPDK_BDEV = "keel0"

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0

# The largest value the suite stores. keel's default profile allows 1 MiB values; memcached is
# started with -I 1m, where 1 MiB minus item overhead is the real limit (see test_values.py).
VALUE_MAX_BYTES = 1024 * 1024

IS_KEEL = TARGET == "keel"
IS_MEMCACHED = TARGET == "memcached"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "keel_only: needs keel-node (durability, corruption); skipped on memcached"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the log tail of every server it started or that is still
    running (a hang on CI is otherwise a bare TimeoutError)."""
    first = len(Server.started)
    if call.when == "setup":
        item._keel_first_server = first
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        since = getattr(item, "_keel_first_server", 0)
        for i, s in enumerate(Server.started):
            if i < since and not s.running():
                continue
            state = "running" if s.running() else f"exited {s.proc.poll() if s.proc else None}"
            text = s.log_text() or "(empty)"
            if s.running() and s.kind == "keel":
                try:
                    with Conn(s.port, timeout_s=2.0) as c:
                        c.send(b"stats\r\n")
                        text += "\n--- stats now:\n" + c.read_until(b"END\r\n").decode(errors="replace")
                except (OSError, TimeoutError, EOFError) as e:
                    text += f"\n--- stats now: no answer ({e!r})"
            report.sections.append((f"{s.kind} on port {s.port} ({state}) log", text))


def pytest_collection_modifyitems(config, items):
    if TARGET == "keel":
        return
    skip = pytest.mark.skip(
        reason="keel only: memcached keeps nothing across a restart, so durability and on-disk "
        "corruption cannot be tested against it"
    )
    for item in items:
        if "keel_only" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------
# Sockets


# Ports are handed out by one allocator for the whole test session: blocks of consecutive ports,
# each block starting after the last one handed out, so no two servers (or a node's shard ports,
# PORT + s, and another server's port) can ever be given overlapping ports. Asking the kernel for
# a free port per server cannot promise that: it checks one port at a time and forgets it, and
# CI once failed when node 3's peer ports p, p+1 covered node 2's client port. The blocks lie
# below the ephemeral range, so a node restarted by a test finds its ports free again (an
# ephemeral port may meanwhile be lent to some outgoing connection). Each block is checked
# free with a bind before it is handed out, for processes outside this session.
_PORT_LOW = 10000
_port_next: int | None = None


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _PORT_LOW + 1000)


def port_block(count: int = 1) -> int:
    """The first of `count` consecutive ports on HOST, all free now and none handed out before
    in this session (until the range below the ephemeral ports wraps around)."""
    global _port_next
    assert 1 <= count <= 64, count
    high = _ephemeral_low()
    if _port_next is None:
        # A random start, so two sessions on one machine rarely walk the same ports.
        _port_next = _PORT_LOW + int.from_bytes(os.urandom(2), "little") % (high - _PORT_LOW)
    for _ in range((high - _PORT_LOW) // count + 1):
        if _port_next + count > high:
            _port_next = _PORT_LOW
        base = _port_next
        _port_next += count
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {_PORT_LOW}..{high}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def keel_shards() -> int:
    """Shards KEEL_CORES gives a keel-node ("0,1", "0-3")."""
    n = 0
    for part in filter(None, KEEL_CORES.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def free_port() -> int:
    """One port from the session's allocator (see `port_block`)."""
    return port_block(1)


class Conn:
    """One client connection. Reads stop at a terminator or raise on timeout, never sleep."""

    def __init__(self, port: int, timeout_s: float = READ_TIMEOUT_S):
        self.sock = socket.create_connection((HOST, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_s = timeout_s
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more into the buffer. False on EOF. Raises TimeoutError at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply in time; have {self.buf[:300]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError(f"no complete reply in time; have {self.buf[:300]!r}") from None
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, suffix: bytes, timeout_s: float | None = None) -> bytes:
        """Everything up to and including the first occurrence of `suffix`."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            i = self.buf.find(suffix)
            if i >= 0:
                out, self.buf = self.buf[: i + len(suffix)], self.buf[i + len(suffix) :]
                return out
            if not self._fill(deadline):
                raise EOFError(f"connection closed before {suffix!r}; have {self.buf[:300]!r}")

    def read_exact(self, n: int, timeout_s: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_line(self, timeout_s: float | None = None) -> bytes:
        return self.read_until(b"\r\n", timeout_s)

    def read_to_eof(self, timeout_s: float | None = None) -> bytes:
        """Everything until the server closes the connection (raises if it does not)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                more = self._fill(deadline)
            except ConnectionResetError:
                more = False
            if not more:
                out, self.buf = self.buf, b""
                return out

    def sync(self, timeout_s: float | None = None) -> bytes:
        """Send `mn` and return every byte the server sent before its `MN`.

        `mn` is the meta no-op: the server answers it in order, so whatever came before it is the
        complete reply to the earlier requests, with nothing left in flight.
        """
        self.send(b"mn\r\n")
        out = self.read_until(b"MN\r\n", timeout_s)
        return out[: -len(b"MN\r\n")]

    def call(self, req: bytes, timeout_s: float | None = None) -> bytes:
        """Send `req` and return its complete reply (delimited by an `mn` sentinel)."""
        self.send(req)
        return self.sync(timeout_s)

    # Small helpers for the classic text protocol.

    def set(self, key: bytes | str, value: bytes, flags: int = 0, exptime: int = 0) -> bytes:
        key = key.encode() if isinstance(key, str) else key
        self.send(b"set %s %d %d %d\r\n%s\r\n" % (key, flags, exptime, len(value), value))
        return self.read_line()

    def get(self, key: bytes | str) -> bytes | None:
        """The value of `key`, or None on a miss. Checks the reply's framing exactly."""
        key = key.encode() if isinstance(key, str) else key
        self.send(b"get %s\r\n" % key)
        line = self.read_line()
        if line == b"END\r\n":
            return None
        m = re.fullmatch(rb"VALUE (\S+) (\d+) (\d+)\r\n", line)
        assert m, f"bad get reply line {line!r}"
        assert m.group(1) == key, line
        value = self.read_exact(int(m.group(3)) + 2)
        assert value.endswith(b"\r\n"), value[-10:]
        end = self.read_line()
        assert end == b"END\r\n", end
        return value[:-2]

    def stats(self) -> dict[str, str]:
        self.send(b"stats\r\n")
        raw = self.read_until(b"END\r\n")
        out = {}
        for line in raw.split(b"\r\n"):
            if line.startswith(b"STAT "):
                _, name, value = line.decode().split(" ", 2)
                out[name] = value
        return out


# --------------------------------------------------------------------------------------------
# Servers


class Server:
    """A keel-node or memcached process that this test session started (and only that one)."""

    # Every server started in this session, so a failing test's report can show their logs.
    started: list["Server"] = []

    def __init__(self, kind: str, workdir: Path):
        Server.started.append(self)
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        # A lone keel-node runs its own meta service and accepts peers (one port per shard);
        # both stay the same across restarts, as the meta service remembers them.
        self.meta_port = free_port()
        self.peer_port = port_block(keel_shards())
        self.data_path = workdir / "keel.data"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "server.log"
        self.starts = 0
        # More keel-node arguments (e.g. --metrics-listen), kept across restarts.
        self.extra_args: list[str] = []
        # The profile keel-node runs with (a test may write its own from this one's text), kept
        # across restarts.
        self.profile: Path = KEEL_PROFILE
        if kind == "keel" and BACKEND == "spdk":
            self.profile = self._spdk_profile()

    def _spdk_profile(self) -> Path:
        """KEEL_PROFILE on the SPDK backend: an aio bdev over this node's data file."""
        config = self.workdir / "spdk.json"
        config.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [{
            "method": "bdev_aio_create",
            "params": {"name": SPDK_BDEV, "filename": str(self.data_path), "block_size": 4096},
        }]}]}))
        text = KEEL_PROFILE.read_text()
        for key, value in (("backend", f'"spdk"\nspdk_config = "{config}"'),
                           ("meta_data", f'"{self.data_path}.meta"')):
            text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
            assert n == 1, key
        path = self.workdir / "profile-spdk.toml"
        path.write_text(text)
        return path

    def _size_spdk_file(self):
        """An aio bdev needs its file at full size before SPDK starts (keel sizes a file itself
        only on io_uring)."""
        size = int(re.search(r"^size_bytes = ([\d_]+)", self.profile.read_text(), re.M)[1])
        with open(self.data_path, "ab") as f:
            if f.tell() < size:
                os.posix_fallocate(f.fileno(), 0, size)

    # -- commands

    def command(self) -> list[str]:
        if self.kind == "memcached":
            cmd = [MEMCACHED_BIN, "-l", HOST, "-p", str(self.port), "-U", "0", "-I", "1m"]
            if os.geteuid() == 0:
                # memcached refuses to run as root without naming a user.
                cmd += ["-u", "root"]
            return cmd
        return [
            str(KEEL_NODE_BIN),
            "--profile",
            str(self.profile),
            "--listen",
            f"{HOST}:{self.port}",
            "--data",
            SPDK_BDEV if BACKEND == "spdk" else str(self.data_path),
            "--cores",
            KEEL_CORES,
            "--meta-listen",
            f"{HOST}:{self.meta_port}",
            "--peer-listen",
            f"{HOST}:{self.peer_port}",
            *self.extra_args,
        ]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    # -- lifecycle

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if self.kind == "keel" and not KEEL_NODE_BIN.exists():
            pytest.fail(
                f"keel-node binary not found at {KEEL_NODE_BIN}: run `cargo build --release` or set "
                "KEEL_NODE_BIN (or KEEL_E2E_TARGET=memcached to run against memcached)"
            )
        if self.kind == "keel" and BACKEND == "spdk":
            self._size_spdk_file()
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n=== start #{self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_ready()

    def wait_ready(self):
        """Bounded retry until the server accepts a connection and answers `version`."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"{self.kind} exited with {code} during start-up; its output:\n{self.log_text()}"
                )
            try:
                with Conn(self.port, timeout_s=2.0) as c:
                    c.send(b"version\r\n")
                    if c.read_line().startswith(b"VERSION "):
                        return
            except (OSError, TimeoutError, EOFError) as e:
                last_err = e
            # Back off a little between connection attempts (this is a retry, not a reply wait).
            time.sleep(0.05)
        self.kill()
        pytest.fail(
            f"{self.kind} did not accept on {HOST}:{self.port} within {START_TIMEOUT_S}s "
            f"({last_err!r}); its output:\n{self.log_text()}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM by PID, then SIGKILL if it does not exit in time."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self):
        """SIGKILL by PID: no chance to flush anything (a crash)."""
        if not self.running():
            return
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def crash_and_restart(self):
        """SIGKILL the node and start it again on the same data file and port."""
        self.kill()
        self.start()

    def restart(self):
        """Graceful stop, then start again on the same data file and port."""
        self.stop()
        self.start()

    def connect(self, timeout_s: float = READ_TIMEOUT_S) -> Conn:
        return Conn(self.port, timeout_s)

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"


def _new_server(tmp_root: Path) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix=f"keel-e2e-{TARGET}-", dir=tmp_root))
    return Server(TARGET, workdir)


@pytest.fixture(scope="session", autouse=True)
def _drop_data_files(tmp_path_factory):
    """At the end of the session, deletes every data file left under pytest's temporary
    directories (each node's is gigabytes allocated up front, and pytest keeps the last three
    sessions' directories); logs stay for reading."""
    yield
    for f in tmp_path_factory.getbasetemp().rglob("*.data"):
        f.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def _tmp_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def server(_tmp_root):
    """One server per test module. Tests use their own keys (or flush first)."""
    s = _new_server(_tmp_root)
    s.start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


@pytest.fixture
def fresh_server(_tmp_root):
    """A server of its own for one test (state-sensitive tests: stats, flush, crash, corruption)."""
    s = _new_server(_tmp_root)
    s.start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


@pytest.fixture
def conn(server):
    with server.connect() as c:
        yield c


@pytest.fixture
def keel_node(fresh_server):
    """A keel-node of its own, with `crash_and_restart()`, `restart()` and `data_path`."""
    assert fresh_server.kind == "keel"
    return fresh_server


@pytest.fixture
def data_path(keel_node) -> Path:
    """The keel-node's data file."""
    return keel_node.data_path
