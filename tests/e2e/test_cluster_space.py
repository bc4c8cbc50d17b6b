"""keel only: a three-node cluster whose Raft logs are small (4 segments of 8 MiB per shard) takes
far more data than its logs hold. Checkpoints compact the logs; past half full they come every
100 ms and keep no entries for lagging peers, and a leader refuses new writes with
`SERVER_ERROR ...; retry` rather than filling its log. No node may die, every acknowledged write
reads back from every node, and the replicas converge.
"""

from __future__ import annotations

import time

import pytest

from test_cluster import _check_all, _start_cluster, _stop_cluster, _wait_converged

pytestmark = pytest.mark.keel_only

SMALL_LOG = {"region_bytes": 4 * 8 * 1024 * 1024}


def _store_all(node, items: dict[bytes, bytes], deadline_s: float = 120.0) -> int:
    """Pipelined sets of `items` in batches; a write refused with SERVER_ERROR (log full, leader
    change) is sent again. Returns how many refusals there were."""
    refused = 0
    pending = list(items)
    deadline = time.monotonic() + deadline_s
    with node.connect(timeout_s=30) as c:
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} writes never stored"
            batch, pending = pending[:200], pending[200:]
            c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(items[k]), items[k]) for k in batch))
            for k in batch:
                line = c.read_line(timeout_s=30)
                if line != b"STORED\r\n":
                    assert line.startswith(b"SERVER_ERROR"), (k, line)
                    refused += 1
                    pending.append(k)
    return refused


@pytest.fixture
def small_log_cluster(_tmp_root):
    nodes = _start_cluster(_tmp_root, SMALL_LOG)
    yield nodes
    _stop_cluster(nodes)


def test_more_data_than_the_raft_logs_hold(small_log_cluster):
    nodes = small_log_cluster
    # 96 MiB of values through logs of 32 MiB per shard: three times over.
    items = {b"space-%d" % i: bytes([97 + i % 26]) * 4096 for i in range(24 * 1024)}
    _store_all(nodes[0], items)
    for n in nodes:
        assert n.running(), f"node {n.node_id} died"
    _wait_converged(nodes)
    for n in nodes:
        _check_all(n, {k: items[k] for k in list(items)[::97]})
