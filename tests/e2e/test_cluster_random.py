"""keel only: seeded randomized fault scenarios on a three-node cluster (processes on loopback).

Each seed drives a fixed sequence of steps chosen by `random.Random(seed)`: write a batch through
a random live node, read a sample back from a random live node, SIGKILL a node, restart it,
pause (SIGSTOP) a node, resume it; never more than one node down at a time, so a majority is
always up. After the steps every node is brought back and the test checks that every write that
was acknowledged reads back from every node and that the replicas' digests are equal.

A failing seed reruns the same steps: `KEEL_CLUSTER_SEEDS=17 pytest tests/e2e/test_cluster_random.py`.
CI runs a few seeds; the soak command runs many:
`KEEL_CLUSTER_SEEDS=1-100 KEEL_CLUSTER_STEPS=40 pytest tests/e2e/test_cluster_random.py`.
"""

from __future__ import annotations

import os
import random

import pytest

from test_cluster import _check_all, _items, _retry_set, _wait_converged, _wait_leaders, cluster  # noqa: F401

pytestmark = pytest.mark.keel_only


def seeds_from_env(name: str, default: str) -> list[int]:
    """Seeds from env `name`: a comma-separated list of numbers and ranges like `1-100`."""
    spec = os.environ.get(name, default)
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


STEPS = int(os.environ.get("KEEL_CLUSTER_STEPS", "12"))


@pytest.mark.parametrize("seed", seeds_from_env("KEEL_CLUSTER_SEEDS", "1,2"))
def test_random_faults_keep_acked_writes_and_converge(cluster, seed):
    rng = random.Random(seed)
    acked: dict[bytes, bytes] = {}
    down: int | None = None  # index of the node that is killed or paused
    paused = False
    for step in range(STEPS):
        live = [i for i in range(3) if i != down]
        action = rng.choice(["write", "write", "read", "fault"])
        if action == "write":
            node = cluster[rng.choice(live)]
            batch = _items(f"s{seed}-{step}", rng.randint(5, 40))
            for k, v in batch.items():
                # A write refused during a leader change is retried until the cluster takes it.
                _retry_set(node, k, v)
                acked[k] = v
        elif action == "read" and acked:
            node = cluster[rng.choice(live)]
            sample = dict(rng.sample(sorted(acked.items()), min(20, len(acked))))
            _wait_leaders([cluster[i] for i in live])
            _check_all(node, sample)
        elif action == "fault":
            if down is None:
                down = rng.randrange(3)
                paused = rng.random() < 0.5
                if paused:
                    cluster[down].pause()
                else:
                    cluster[down].kill()
            else:
                if paused:
                    cluster[down].resume()
                else:
                    cluster[down].start()
                down = None
    if down is not None:
        if paused:
            cluster[down].resume()
        else:
            cluster[down].start()
    _wait_leaders(cluster)
    for node in cluster:
        _check_all(node, acked)
    _wait_converged(cluster)
