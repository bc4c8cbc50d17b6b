"""keel only: the admin surface and TLS for clients (issue 13 item 6; threat model in
docs/design.md, "Security").

- Admin commands (members, member_add, member_promote, member_remove): with no
  `net.admin_token` a loopback client may run them and a client from another address is refused
  (run for real from a second network namespace: the node in one, the client in another); with a
  token, every connection (loopback too) is refused until `admin_auth <token>`, and a wrong token
  closes the connection. Refusals and failures are counted; the token never appears in
  `--print-profile`, `stats settings` or an error message.
- TLS: with `net.tls_cert` and `net.tls_key` the client port speaks only TLS: pymemcache over
  TLS stores and reads (a 1 MiB value and a pipelined multi-get too), a plaintext client gets
  no answer and is counted as a failed handshake, a client that does not trust the certificate
  fails its handshake, `stats settings` says `ssl_enabled yes`. A missing certificate, a key
  that does not belong to it, or only one of the two keys set stops the node with a message
  naming the key.
- The cluster secret (`node.cluster_secret`): three nodes that share it replicate; a raw peer
  connection with a hello but no answer to the challenge is closed before any frame counts; a
  node restarted with another secret is refused by the others (it learns nothing new) until it
  is restarted with the right one, then it catches up.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from conftest import HOST, KEEL_NODE_BIN, REPO_ROOT, START_TIMEOUT_S, Conn, Server

pytestmark = pytest.mark.keel_only

DEV_TOML = (REPO_ROOT / "hw-configs" / "dev.toml").read_text()
TOKEN = "k33l-admin-" + os.urandom(8).hex()
ADMIN_REFUSED = (
    b"CLIENT_ERROR admin commands need admin_auth <net.admin_token> (or, with no token, a "
    b"loopback client)\r\n"
)


def profile_with(path: Path, **net: str) -> Path:
    text = DEV_TOML
    for k, v in net.items():
        text, n = re.subn(rf'^{k} = ""$', f'{k} = "{v}"', text, flags=re.M)
        assert n == 1, f"dev.toml has no `{k} = \"\"` line"
    path.write_text(text)
    return path


class ProfiledNode(Server):
    """A keel-node on a profile of the test's own (dev.toml with some net keys set)."""

    # Nodes of the running test; `_remove_data` stops them and deletes their data files.
    made: list["ProfiledNode"] = []

    def __init__(self, workdir: Path, profile: Path, prefix: list[str] | None = None,
                 listen_host: str = HOST):
        super().__init__("keel", workdir)
        ProfiledNode.made.append(self)
        self.profile = profile
        self.prefix = prefix or []
        self.listen_host = listen_host

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--profile") + 1] = str(self.profile)
        cmd[cmd.index("--listen") + 1] = f"{self.listen_host}:{self.port}"
        return self.prefix + cmd


@pytest.fixture(autouse=True)
def _remove_data():
    """Each node's data file is 2 GiB allocated up front: deleted after its test, since pytest
    keeps the tmp_path of recent sessions."""
    yield
    for n in ProfiledNode.made:
        n.stop()
        n.data_path.unlink(missing_ok=True)
    ProfiledNode.made.clear()


def run_keel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KEEL_NODE_BIN), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def stats(c: Conn, group: str = "") -> dict[str, str]:
    c.send(f"stats {group}".strip().encode() + b"\r\n")
    out = c.read_until(b"END\r\n")
    return {l.split()[1].decode(): l.split()[2].decode()
            for l in out.split(b"\r\n") if l.startswith(b"STAT ")}


# --------------------------------------------------------------------------------------------
# Admin commands


def test_with_a_token_admin_commands_wait_for_admin_auth_even_on_loopback(tmp_path):
    node = ProfiledNode(tmp_path, profile_with(tmp_path / "p.toml", admin_token=TOKEN))
    node.start()
    try:
        with node.connect() as c:
            assert c.call(b"members\r\n") == ADMIN_REFUSED
            assert c.call(b"member_add 2 127.0.0.1:1\r\n") == ADMIN_REFUSED
            # Data commands are not admin commands.
            assert c.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
            assert c.call(b"admin_auth " + TOKEN.encode() + b"\r\n") == b"OK\r\n"
            members = c.call(b"members\r\n", timeout_s=10)
            assert members.startswith(b"MEMBER 1 "), members
            assert members.endswith(b"END\r\n"), members
        # A wrong token is refused and closes the connection; a fresh connection is not admin.
        with node.connect() as c:
            c.send(b"admin_auth " + b"x" * len(TOKEN) + b"\r\nmembers\r\n")
            assert c.read_to_eof() == b"CLIENT_ERROR bad admin token\r\n"
        with node.connect() as c:
            assert c.call(b"members\r\n") == ADMIN_REFUSED
            s = stats(c)
            assert s["keel_admin_refused"] == "3", s
            assert s["keel_admin_auth_failures"] == "1", s
            settings = stats(c, "settings")
            assert settings["keel_admin_token"] == "yes"
            assert TOKEN not in repr(settings)
    finally:
        node.stop()
    shown = run_keel("--profile", str(node.profile), "--print-profile")
    assert shown.returncode == 0, shown.stderr
    assert 'admin_token = "<redacted>"' in shown.stdout
    assert TOKEN not in shown.stdout


def test_without_a_token_admin_auth_is_off_and_loopback_clients_are_admins(tmp_path):
    node = ProfiledNode(tmp_path, tmp_path / "p.toml")
    profile_with(node.profile)
    node.start()
    try:
        with node.connect() as c:
            assert c.call(b"admin_auth " + TOKEN.encode() + b"\r\n") == \
                b"CLIENT_ERROR admin_auth is off: net.admin_token is empty\r\n"
            # Served (not refused) at once; it lists the node once its meta service placed it.
            _wait(lambda: c.call(b"members\r\n").startswith(b"MEMBER 1 "), node)
            assert stats(c)["keel_admin_refused"] == "0"
    finally:
        node.stop()


@pytest.mark.parametrize("token", ["short-token", "has a space in it!", "tab\\tinside-the-token"])
def test_a_weak_or_malformed_token_is_refused_without_echoing_it(tmp_path, token):
    p = profile_with(tmp_path / "p.toml", admin_token=token)
    r = run_keel("--check-profile", str(p))
    assert r.returncode != 0
    msg = r.stdout + r.stderr
    assert "net.admin_token" in msg and "at least 16 printable ASCII characters" in msg, msg
    assert token.replace("\\t", "\t") not in msg


def _netns(name: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair: 10.231.N.1 (the node's) and 10.231.N.2
    (the remote client's). Created for this test and deleted after it."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = f"{os.getpid() % 10000}{os.urandom(1).hex()}"
    a, b, n = f"keelA{tag}", f"keelB{tag}", os.getpid() % 250
    cmds = [
        ["ip", "netns", "add", a],
        ["ip", "netns", "add", b],
        ["ip", "link", "add", f"kva{tag}", "type", "veth", "peer", "name", f"kvb{tag}"],
        ["ip", "link", "set", f"kva{tag}", "netns", a],
        ["ip", "link", "set", f"kvb{tag}", "netns", b],
        _netns(a, "ip", "addr", "add", f"10.231.{n}.1/24", "dev", f"kva{tag}"),
        _netns(b, "ip", "addr", "add", f"10.231.{n}.2/24", "dev", f"kvb{tag}"),
        _netns(a, "ip", "link", "set", f"kva{tag}", "up"),
        _netns(b, "ip", "link", "set", f"kvb{tag}", "up"),
        _netns(a, "ip", "link", "set", "lo", "up"),
        _netns(b, "ip", "link", "set", "lo", "up"),
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True, timeout=30)
        yield a, b, f"10.231.{n}.1"
    finally:
        for ns in (a, b):  # deleting a namespace deletes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"members\r\nversion\r\n")
out = b""
while not out.endswith(b"\r\n") or out.count(b"\r\n") < 2:
    chunk = s.recv(65536)
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(out)
"""


def test_a_client_from_another_address_is_refused_admin_commands(tmp_path, two_namespaces):
    ns_node, ns_client, ip = two_namespaces
    # Listening on every address of its own namespace: its loopback and the veth address.
    node = ProfiledNode(tmp_path, profile_with(tmp_path / "p.toml"),
                        prefix=_netns(ns_node), listen_host="0.0.0.0")

    def ask(ns: str, host: str) -> str:
        r = subprocess.run(_netns(ns, sys.executable, "-c", CLIENT, host, str(node.port)),
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()  # bytes as sent: text mode would turn \r\n into \n

    node.wait_ready = lambda: _wait(lambda: ask(ns_node, "127.0.0.1").endswith("\r\n"), node)
    node.start()
    try:
        remote = ask(ns_client, ip)
        assert remote.startswith(ADMIN_REFUSED.decode()), remote
        assert "VERSION " in remote
        # Served to loopback (it lists the node once the node's meta service placed it).
        _wait(lambda: ask(ns_node, "127.0.0.1").startswith("MEMBER 1 "), node)
    finally:
        node.stop()


def _wait(ready, node: Server):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not node.running():
            pytest.fail(f"keel-node exited during start-up:\n{node.log_text()}")
        try:
            if ready():
                return
        except (OSError, AssertionError, ssl.SSLError, subprocess.SubprocessError):
            pass
        time.sleep(0.1)
    node.kill()
    pytest.fail(f"keel-node did not become ready in {START_TIMEOUT_S}s:\n{node.log_text()}")


# --------------------------------------------------------------------------------------------
# TLS


def make_cert(d: Path, name: str) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert, key


def tls_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    return ctx


@pytest.fixture
def tls_node(tmp_path):
    cert, key = make_cert(tmp_path, "keel")
    node = ProfiledNode(tmp_path, profile_with(tmp_path / "p.toml", tls_cert=str(cert),
                                               tls_key=str(key)))
    ctx = tls_context(cert)

    def ready() -> bool:
        with socket.create_connection((HOST, node.port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname=HOST) as s:
                s.sendall(b"version\r\n")
                return s.recv(100).startswith(b"VERSION ")

    node.wait_ready = lambda: _wait(ready, node)
    node.start()
    yield node, ctx
    node.stop()


def tls_stats(node: Server, ctx: ssl.SSLContext, group: str = "") -> dict[str, str]:
    c = Client((HOST, node.port), tls_context=ctx, timeout=10)
    try:
        return {k.decode(): (v.decode() if isinstance(v, bytes) else str(v))
                for k, v in c.stats(*([group] if group else [])).items()}
    finally:
        c.close()


def test_tls_clients_store_and_read_and_plaintext_gets_nothing(tls_node):
    node, ctx = tls_node
    c = Client((HOST, node.port), tls_context=ctx, timeout=10)
    try:
        assert c.set("tls:small", b"hello") is True
        assert c.get("tls:small") == b"hello"
        big = os.urandom(1024 * 1024 - 512)
        assert c.set("tls:big", big) is True
        assert c.get("tls:big") == big
        keys = [f"tls:k{i}" for i in range(200)]
        assert c.set_many({k: k.encode() * 3 for k in keys}) == []
        assert c.get_many(keys) == {k: k.encode() * 3 for k in keys}
    finally:
        c.close()
    # A plaintext request is not a TLS ClientHello: no reply, the connection is closed.
    before = int(tls_stats(node, ctx)["ssl_handshake_errors"])
    with socket.create_connection((HOST, node.port), timeout=10) as s:
        s.sendall(b"version\r\n")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        assert b"VERSION" not in got
    s = tls_stats(node, ctx)
    assert int(s["ssl_handshake_errors"]) == before + 1, s
    assert tls_stats(node, ctx, "settings")["ssl_enabled"] == "yes"


def test_a_client_that_does_not_trust_the_certificate_fails_the_handshake(tls_node, tmp_path):
    node, ctx = tls_node
    other_ca, _ = make_cert(tmp_path, "other")
    before = int(tls_stats(node, ctx)["ssl_handshake_errors"])
    with socket.create_connection((HOST, node.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_context(other_ca).wrap_socket(raw, server_hostname=HOST)
    # The node sees the aborted handshake (on whichever shard took it, a moment later) and
    # serves the next, trusting, client.
    deadline = time.monotonic() + 10
    while True:
        s = tls_stats(node, ctx)
        if int(s["ssl_handshake_errors"]) == before + 1 and s["curr_connections"] == "1":
            break
        assert time.monotonic() < deadline, s
        time.sleep(0.05)


def test_bad_tls_files_stop_the_node_naming_the_key(tmp_path):
    cert, key = make_cert(tmp_path, "keel")
    _, other_key = make_cert(tmp_path, "other")
    cases = [
        ({"tls_cert": str(tmp_path / "missing.crt"), "tls_key": str(key)}, "net.tls_cert"),
        ({"tls_cert": str(cert), "tls_key": str(other_key)}, "net.tls_key"),
        ({"tls_cert": str(key), "tls_key": str(key)}, "net.tls_cert"),
        ({"tls_cert": str(cert)}, "set both"),
    ]
    for i, (keys, named) in enumerate(cases):
        p = profile_with(tmp_path / f"p{i}.toml", **keys)
        r = run_keel("--profile", str(p), "--listen", f"{HOST}:1", "--data",
                     str(tmp_path / f"d{i}" / "keel.data"), "--cores", "0")
        assert r.returncode != 0, keys
        assert named in r.stderr, (keys, r.stderr)
        assert not (tmp_path / f"d{i}" / "keel.data").exists(), "refused before the data file"


# --------------------------------------------------------------------------------------------
# The cluster secret on peer ports

SECRET = "peer-secret-" + os.urandom(8).hex()


def _peer_stat(node: Server, name: str) -> int:
    with node.connect(timeout_s=10) as c:
        return int(c.stats()[name])


def test_peers_prove_the_cluster_secret_and_a_node_without_it_gets_nothing(_tmp_root):
    import test_cluster as tc

    nodes = tc._new_cluster(_tmp_root, {"cluster_secret": f'"{SECRET}"'})
    try:
        tc._start_nodes(nodes)
        items = tc._items("secret", 200)
        tc._set_many(nodes[0], items)
        tc._wait_converged(nodes)
        tc._check_all(nodes[2], items)
        assert all(_peer_stat(n, "keel_peer_bad_auth") == 0 for n in nodes)

        # A connection that knows the peer protocol but not the secret: an open-cluster hello
        # to node 2's shard 0 is closed before any frame counts.
        n2 = nodes[1]
        peer_port = int(n2.peers.split(",")[1].split(":")[-1])
        before = _peer_stat(n2, "keel_peer_bad_auth")
        hello = b"KEEL" + (1).to_bytes(2, "little") + bytes(2) + (9).to_bytes(8, "little") + \
            bytes(4) + (2).to_bytes(8, "little") + bytes(4)
        with socket.create_connection((HOST, peer_port), timeout=10) as s:
            s.sendall(hello + bytes(64))
            try:
                got = s.recv(100)
            except ConnectionResetError:  # closed with our 64 bytes unread
                got = b""
            assert got == b"", "the node answered an unproven peer"
        deadline = time.monotonic() + 10
        while _peer_stat(n2, "keel_peer_bad_auth") != before + 1:
            assert time.monotonic() < deadline, "bad_auth not counted"
            time.sleep(0.05)

        # Node 3 restarted with another secret: the others refuse it, so it learns nothing new
        # while nodes 1 and 2 (a majority) keep accepting writes.
        n3 = nodes[2]
        n3.stop()
        n3.profile.write_text(n3.profile.read_text().replace(SECRET, SECRET[::-1]))
        n3.start()
        later = tc._items("later", 50)
        for k, v in later.items():
            tc._retry_set(nodes[0], k, v)
        deadline = time.monotonic() + 10
        while _peer_stat(nodes[0], "keel_peer_bad_auth") == 0:
            assert time.monotonic() < deadline, "node 1 never refused node 3"
            time.sleep(0.1)
        assert tc._digest(n3) != tc._digest(nodes[0])
        # With the right secret again it catches up.
        n3.stop()
        n3.profile.write_text(n3.profile.read_text().replace(SECRET[::-1], SECRET))
        n3.start()
        tc._wait_converged(nodes)
        tc._check_all(n3, later)
    finally:
        tc._stop_cluster(nodes)
