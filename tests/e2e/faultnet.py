"""A seeded, fault-injecting TCP proxy between keel-node processes (a test instrument).

Every directed link a->b of the cluster gets a proxy: node a's `--peers` names the proxy as node
b's address, so a's shards connect to the proxy, which connects on to b (shard t of the proxy
listens on its base port + t and forwards to b's peer port + t, as the nodes' own ports are laid
out). The nodes run unchanged, over real TCP.

A peer connection carries bytes one way: a 32-byte hello, then frames
`u32 LE payload length | u32 LE CRC32C(payload) | payload` (node/src/transport/wire.rs). The proxy
passes the hello through first and unchanged, then decides per whole frame: pass, drop,
duplicate, delay, or reorder (hold it back until the next frame has gone out). Bytes are never
altered (a bad CRC only closes the connection, which the transport's unit tests cover), and a
`partition` drops every frame on the links it cuts.

Determinism: each pipe (link and shard pair) draws from its own `random.Random`, seeded from
(seed, a, b, from_shard, to_shard) and kept across reconnects, and every frame takes the same
number of draws whatever its fate. So with a given seed the n-th frame on a pipe meets the same
fate on every run. Which frames the nodes send depends on their timing, so a rerun repeats the
decisions, not necessarily the whole run.

Duplicates and delays go beyond what TCP does: the transport promises no duplicates and no
reordering. A leader refuses a second copy of a forwarded client request (it remembers each
origin's forward ids), so a duplicated incr still runs once.

The proxy runs an asyncio loop in a thread of its own, so synchronous test code drives the
cluster meanwhile; plans and cuts are set from the test's thread under a lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import threading
from dataclasses import dataclass
from typing import Callable

HOST = "127.0.0.1"
HELLO_BYTES = 32
HELLO_MAGIC = b"KEEL"
FRAME_HEADER_BYTES = 8
# Past node/src/server.rs's frame_bytes_max (2 * value_len_max + 1 MiB): a longer length field
# means the proxy lost the framing, which is a bug here, not a fault to inject.
FRAME_BYTES_MAX = 64 << 20
# Bytes of delayed frames one pipe may hold; past it frames go out at once (counted).
DELAYED_BYTES_MAX = 16 << 20
# A frame held back for reordering goes out after the next frame, or after this long.
REORDER_HOLD_S = 0.2
CONNECT_TIMEOUT_S = 2.0
# Bounds the wait for a hello, for the rest of a frame whose header came, and for the receiving
# node to take a write; past it the pipe closes (the sender reconnects), so a stopped node cannot
# make the proxy buffer without bound.
IO_TIMEOUT_S = 5.0
# A pipe with no frame for this long is closed; the sender reconnects when it next sends.
IDLE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0

Link = tuple[int, int]  # (from node, to node)


@dataclass(frozen=True)
class Plan:
    """What happens to the frames of one directed link. Probabilities are per frame."""

    drop: float = 0.0
    # Of the frames not dropped, how many go out twice.
    duplicate: float = 0.0
    # Of the copies that go out, how many are held back, by a uniform delay in delay_ms.
    delay: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)
    # Of the frames not dropped, how many are held until the next frame has gone out.
    reorder: float = 0.0

    def __post_init__(self):
        for name in ("drop", "duplicate", "delay", "reorder"):
            p = getattr(self, name)
            assert 0.0 <= p <= 1.0, f"{name} = {p}: must be a probability"
        lo, hi = self.delay_ms
        assert 0.0 <= lo <= hi <= 10_000, f"delay_ms = {self.delay_ms}: need 0 <= lo <= hi <= 10000"


CLEAN = Plan()


@dataclass
class Counters:
    """Frames of one directed link, counted as the proxy decided them."""

    passed: int = 0  # frames read from the sender and sent on (each once, however sent)
    dropped: int = 0  # by the plan
    cut: int = 0  # by a partition
    duplicated: int = 0
    delayed: int = 0  # copies held back by a delay
    reordered: int = 0
    delay_overflow: int = 0  # copies sent at once because DELAYED_BYTES_MAX was reached
    connections: int = 0  # pipes opened
    refused: int = 0  # connections closed because the receiving node did not accept

    def faults(self) -> int:
        return self.dropped + self.cut + self.duplicated + self.delayed + self.reordered


def decide(plan: Plan, rng: random.Random) -> str | list[float]:
    """The fate of one frame: "drop", "hold" (reorder), or the delay in seconds of each copy to
    send (0 = now). Always seven draws, so the n-th frame's fate depends only on the seed and n."""
    d = [rng.random() for _ in range(7)]
    if d[0] < plan.drop:
        return "drop"
    if d[1] < plan.reorder:
        return "hold"
    copies = 2 if d[2] < plan.duplicate else 1
    lo, hi = plan.delay_ms
    delays = []
    for i in range(copies):
        delayed = d[3 + i] < plan.delay
        delays.append((lo + (hi - lo) * d[5 + i]) / 1000.0 if delayed else 0.0)
    return delays


class _Pipe:
    """The sending half of one proxied connection: writes to the receiving node, holds the
    reordered frame and the delayed ones. Used on the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter):
        self.loop = loop
        self.writer = writer
        self.closed = False
        self.held: bytes | None = None
        self.held_timer: asyncio.TimerHandle | None = None
        self.delayed: dict[int, asyncio.TimerHandle] = {}
        self.delayed_bytes = 0
        self.next_timer = 0

    def send(self, frame: bytes) -> None:
        """Sends `frame` now, then the held frame if there is one (so the two swap places)."""
        if self.closed:
            return
        self.writer.write(frame)
        self.release()

    def hold(self, frame: bytes) -> bool:
        """Holds `frame` back until the next send. False if one is held already."""
        if self.held is not None or self.closed:
            return False
        self.held = frame
        self.held_timer = self.loop.call_later(REORDER_HOLD_S, self.release)
        return True

    def release(self) -> None:
        if self.held_timer is not None:
            self.held_timer.cancel()
            self.held_timer = None
        if self.held is not None and not self.closed:
            self.writer.write(self.held)
        self.held = None

    def send_later(self, delay_s: float, frame: bytes) -> bool:
        """Sends `frame` after `delay_s`. False (and sent now) if too many bytes are delayed."""
        if self.delayed_bytes + len(frame) > DELAYED_BYTES_MAX:
            self.send(frame)
            return False
        self.delayed_bytes += len(frame)
        tid = self.next_timer
        self.next_timer += 1
        self.delayed[tid] = self.loop.call_later(delay_s, self._fire, tid, frame)
        return True

    def _fire(self, tid: int, frame: bytes) -> None:
        del self.delayed[tid]
        self.delayed_bytes -= len(frame)
        if not self.closed:
            self.writer.write(frame)

    def close(self) -> None:
        self.closed = True
        self.held = None
        if self.held_timer is not None:
            self.held_timer.cancel()
        for t in self.delayed.values():
            t.cancel()
        self.delayed.clear()
        self.delayed_bytes = 0
        self.writer.close()


class FaultNet:
    """The proxies of one cluster: a directed link between every two of `node_ports`' nodes.

    `node_ports` maps each node id to its real peer port (shard 0's; shard s listens on + s).
    `port_block()` returns a free base port with `shards` free ports from it. Start the nodes
    with `peers_for(node)`; call `stop()` when they are stopped.
    """

    def __init__(
        self, seed: int, node_ports: dict[int, int], shards: int, port_block: Callable[[], int]
    ):
        self.seed = seed
        self.node_ports = dict(node_ports)
        self.shards = shards
        self.links: list[Link] = [(a, b) for a in node_ports for b in node_ports if a != b]
        self._lock = threading.Lock()
        self._plans: dict[Link, Plan] = {}
        self._cut: set[Link] = set()
        self._counters = {link: Counters() for link in self.links}
        self._rngs: dict[tuple, random.Random] = {}
        self._errors: list[str] = []  # unexpected exceptions in the proxy (its own bugs)
        self._tasks: set[asyncio.Task] = set()
        self._pipes: set[_Pipe] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self.proxy_ports: dict[Link, int] = {}
        socks = []
        try:
            for link in self.links:
                base = port_block()
                self.proxy_ports[link] = base
                for t in range(shards):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((HOST, base + t))
                    s.listen(64)
                    s.setblocking(False)
        except BaseException:
            for s in socks:
                s.close()
            raise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultnet-{seed}", daemon=True
        )
        self._thread.start()
        self._stopped = False
        listening = asyncio.run_coroutine_threadsafe(self._listen(socks), self._loop)
        listening.result(timeout=STOP_TIMEOUT_S)

    # -- for the test's thread

    def peers_for(self, node: int) -> str:
        """Node `node`'s --peers: its own real peer address, and a proxy for every other node."""
        parts = []
        for n, port in sorted(self.node_ports.items()):
            port = port if n == node else self.proxy_ports[(node, n)]
            parts.append(f"{n}={HOST}:{port}")
        return ",".join(parts)

    def set_plan(self, a: int, b: int, plan: Plan) -> None:
        """Frames from node a to node b meet `plan` from now on."""
        assert (a, b) in self._counters, (a, b)
        with self._lock:
            self._plans[(a, b)] = plan

    def set_plan_all(self, plan: Plan) -> None:
        with self._lock:
            self._plans = {link: plan for link in self.links}

    def partition(self, a: int, b: int) -> None:
        """Cuts a and b apart, both directions: every frame between them read from now on is
        dropped. Frames already delayed or held still arrive, like packets in flight."""
        assert a != b and (a, b) in self._counters, (a, b)
        with self._lock:
            self._cut |= {(a, b), (b, a)}

    def isolate(self, node: int) -> None:
        """Cuts `node` off from every other node, both directions."""
        with self._lock:
            self._cut |= {link for link in self.links if node in link}

    def heal(self) -> None:
        """Removes every cut (plans stay: `set_plan_all(CLEAN)` clears them)."""
        with self._lock:
            self._cut.clear()

    def counters(self) -> dict[Link, Counters]:
        with self._lock:
            return {link: dataclasses.replace(c) for link, c in self._counters.items()}

    def total(self) -> Counters:
        out = Counters()
        for c in self.counters().values():
            for f in dataclasses.fields(Counters):
                setattr(out, f.name, getattr(out, f.name) + getattr(c, f.name))
        return out

    def summary(self) -> str:
        lines = [f"faultnet seed {self.seed}:"]
        for link, c in sorted(self.counters().items()):
            lines.append(f"  {link[0]}->{link[1]}: {c}")
        return "\n".join(lines)

    def stop(self) -> None:
        """Closes every listener and connection and ends the thread. Raises if the proxy hit an
        unexpected error while it ran (a bug in the proxy, not a fault it injected)."""
        if self._stopped:
            return
        self._stopped = True
        done = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        done.result(timeout=STOP_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=STOP_TIMEOUT_S)
        assert not self._thread.is_alive(), "faultnet thread did not stop"
        self._loop.close()
        assert not self._errors, "faultnet errors:\n" + "\n".join(self._errors)

    # -- on the loop's thread

    async def _listen(self, socks: list[socket.socket]) -> None:
        i = 0
        for link in self.links:
            for t in range(self.shards):
                handler = self._handler(link, t)
                self._servers.append(await asyncio.start_server(handler, sock=socks[i]))
                i += 1

    def _handler(self, link: Link, to_shard: int):
        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            task = asyncio.current_task()
            self._tasks.add(task)
            try:
                await self._proxy(link, to_shard, reader, writer)
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
                pass  # a node closed, was killed, or went quiet: the pipe ends, it reconnects
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- recorded, and stop() fails the test with it
                self._errors.append(f"{link} shard {to_shard}: {e!r}")
            finally:
                writer.close()
                self._tasks.discard(task)

        return on_accept

    async def _proxy(self, link: Link, to_shard: int, reader, writer) -> None:
        a, b = link
        counters = self._counters[link]
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up = await asyncio.open_connection(HOST, self.node_ports[b] + to_shard)
        except (OSError, TimeoutError):
            # The receiving node is down: refuse, as it would, so the sender backs off.
            with self._lock:
                counters.refused += 1
            return
        up_reader, up_writer = up
        pipe = _Pipe(asyncio.get_running_loop(), up_writer)
        self._pipes.add(pipe)
        # The receiving node never writes; its end closing (a crash) ends the pipe.
        watch = asyncio.ensure_future(self._watch(up_reader))
        # Closing the sender's side too makes it see the loss and reconnect, as it would see the
        # receiving node's own connection close.
        watch.add_done_callback(lambda _: writer.close())
        try:
            with self._lock:
                counters.connections += 1
            async with asyncio.timeout(IO_TIMEOUT_S):
                hello = await reader.readexactly(HELLO_BYTES)
            from_node = int.from_bytes(hello[8:16], "little")
            from_shard = int.from_bytes(hello[16:20], "little")
            to_node = int.from_bytes(hello[20:28], "little")
            hello_to_shard = int.from_bytes(hello[28:32], "little")
            assert hello[:4] == HELLO_MAGIC, f"not a keel hello: {hello!r}"
            assert (from_node, to_node, hello_to_shard) == (a, b, to_shard), (link, to_shard, hello)
            up_writer.write(hello)
            key = (self.seed, a, b, from_shard, to_shard)
            rng = self._rngs.setdefault(key, random.Random(repr(key)))
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    header = await reader.readexactly(FRAME_HEADER_BYTES)
                length = int.from_bytes(header[:4], "little")
                assert length <= FRAME_BYTES_MAX, f"frame length {length}: framing lost"
                async with asyncio.timeout(IO_TIMEOUT_S):
                    frame = header + await reader.readexactly(length)
                self._route(link, pipe, rng, frame)
                async with asyncio.timeout(IO_TIMEOUT_S):
                    await up_writer.drain()
        finally:
            watch.cancel()
            pipe.close()
            self._pipes.discard(pipe)

    async def _watch(self, up_reader: asyncio.StreamReader) -> None:
        """Returns when the receiving node closes its end (it never sends anything). Runs as long
        as its pipe: the pipe cancels it when it ends."""
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    data = await up_reader.read(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self._errors.append(f"a node wrote {len(data)} bytes on an inbound peer connection")
            return

    def _route(self, link: Link, pipe: _Pipe, rng: random.Random, frame: bytes) -> None:
        with self._lock:
            plan = self._plans.get(link, CLEAN)
            cut = link in self._cut
            c = self._counters[link]
            # Draw for every frame, cut or not, so the n-th frame's fate stays the n-th draw.
            fate = decide(plan, rng)
            if cut:
                c.cut += 1
                return
            if fate == "drop":
                c.dropped += 1
                return
            c.passed += 1
            if fate == "hold":
                if pipe.hold(frame):
                    c.reordered += 1
                    return
                fate = [0.0]
            if len(fate) > 1:
                c.duplicated += 1
            for delay_s in fate:
                if delay_s <= 0:
                    pipe.send(frame)
                elif pipe.send_later(delay_s, frame):
                    c.delayed += 1
                else:
                    c.delay_overflow += 1

    async def _shutdown(self) -> None:
        for s in self._servers:
            s.close()
        # A connection accepted just before the close may start its task a little later.
        for _ in range(10):
            if not self._tasks:
                break
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0)
        for p in list(self._pipes):
            p.close()
        for s in self._servers:
            await s.wait_closed()
