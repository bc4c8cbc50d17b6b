"""A linearizability checker for per-key histories of memcached operations (Wing & Gong's search
with Lowe's memoization, as Porcupine and Knossos do it).

A history is what clients saw: for each operation its invocation time, its response time and
its result, or no response time when the outcome is unknown (the request timed out, the
connection broke, or the server answered SERVER_ERROR, which for Keel means "may or may not have
taken effect"). Such a write may have taken effect at any moment after its invocation, or never;
a read with an unknown outcome says nothing and is left out by the recorder.

The model is one register per key holding an integer or nothing: `set v` (STORED), `get`
(its value or a miss), `delete` (DELETED if there was a value, NOT_FOUND if not) and `incr d`
(the new value, or NOT_FOUND). Keys are independent (a key's operations never touch another), so
each key is checked alone, which keeps the search small.

`check(history)` returns None when every key's history is linearizable, or a report naming the
first key that is not, with its history in time order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

INF = math.inf
U64 = 1 << 64


@dataclass
class Op:
    client: int
    key: bytes
    kind: str  # "set" | "get" | "delete" | "incr"
    arg: int | None  # the value set, the incr delta; None for get and delete
    call: float
    ret: float = INF  # INF: no response (outcome unknown)
    # get: the value read (None: a miss); incr: the new value (None: NOT_FOUND);
    # delete: True for DELETED, False for NOT_FOUND; set: None. Meaningless when ret is INF.
    result: object = None
    index: int = field(default=0, compare=False)

    def __str__(self) -> str:
        end = "?" if self.ret == INF else f"{self.ret:.4f}"
        res = "unknown" if self.ret == INF else repr(self.result)
        arg = "" if self.arg is None else f" {self.arg}"
        return f"client {self.client}: {self.kind}{arg} [{self.call:.4f}, {end}] -> {res}"


def step(state: int | None, op: Op) -> tuple[bool, int | None]:
    """(whether `op`'s result fits `state`, the state after it). An unknown outcome fits any."""
    known = op.ret != INF
    if op.kind == "set":
        return True, op.arg
    if op.kind == "get":
        return (not known or op.result == state), state
    if op.kind == "delete":
        return (not known or op.result == (state is not None)), None
    if op.kind == "incr":
        new = None if state is None else (state + op.arg) % U64
        return (not known or op.result == new), new
    raise ValueError(f"unknown op kind {op.kind!r}")


def linearizable(ops: list[Op], initial: int | None = None, budget: int = 2_000_000) -> bool:
    """Whether one key's operations can be ordered so that each takes effect at one instant
    between its call and its return, and every known result is what the register held then.
    Operations with unknown outcomes may be placed anywhere after their call, or left out.
    Raises RuntimeError when the search exceeds `budget` steps (too concurrent to decide)."""
    ops = sorted(ops, key=lambda o: o.call)
    n = len(ops)
    required = 0
    for i, o in enumerate(ops):
        o.index = i
        if o.ret != INF:
            required |= 1 << i
    seen: set[tuple[int, int | None]] = set()
    steps = 0
    # Depth-first over (done mask, state). An op may go next only if it was called before every
    # pending op returned (otherwise that op would have to go first).
    stack: list[tuple[int, int | None]] = [(0, initial)]
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return True
        steps += 1
        if steps > budget:
            raise RuntimeError(f"linearizability search gave up after {budget} steps ({n} ops)")
        first_ret = min((o.ret for o in ops if not done >> o.index & 1), default=INF)
        for o in ops:
            if done >> o.index & 1:
                continue
            if o.call > first_ret:
                break  # sorted by call: no later op can go next either
            ok, after = step(state, o)
            if not ok:
                continue
            nxt = (done | 1 << o.index, after)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def check(history: list[Op]) -> str | None:
    """None if every key is linearizable; else a report of the first key that is not."""
    by_key: dict[bytes, list[Op]] = {}
    for o in history:
        by_key.setdefault(o.key, []).append(o)
    for key in sorted(by_key):
        ops = by_key[key]
        if not linearizable(ops):
            lines = "\n".join(f"  {o}" for o in sorted(ops, key=lambda o: o.call))
            return f"key {key!r} is not linearizable; its {len(ops)} operations:\n{lines}"
    return None
