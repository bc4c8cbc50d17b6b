"""Prometheus metrics (`--metrics-listen`): GET /metrics parses with the Prometheus client's own
text parser, names follow its conventions, and its counters are what `stats` says at the same
moment; any other path is 404."""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import HOST, IS_KEEL, Server, free_port
from test_stats import latency

pytestmark = pytest.mark.skipif(not IS_KEEL, reason="keel only: memcached has no /metrics")


@pytest.fixture
def metrics_server(_tmp_root):
    s = Server("keel", Path(tempfile.mkdtemp(prefix="keel-e2e-metrics-", dir=_tmp_root)))
    s.metrics_port = free_port()
    s.extra_args = ["--metrics-listen", f"{HOST}:{s.metrics_port}"]
    s.start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


def scrape(s, path="/metrics"):
    with urllib.request.urlopen(f"http://{HOST}:{s.metrics_port}{path}", timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def per_command_count(fams, command):
    f = fams["keel_request_duration_seconds"]
    return sum(
        smp.value for smp in f.samples
        if smp.name.endswith("_count") and smp.labels["command"] == command
    )


def test_metrics_agree_with_stats(metrics_server):
    """Counters are summed over the `shard` label and compared with `stats` read just before
    and just after the scrape (nothing else runs on the node; background counters such as
    checkpoints only grow, so each must lie between the two)."""
    n_sets, n_gets = 30, 12
    with metrics_server.connect() as c:
        for i in range(n_sets):
            assert c.set(f"m_{i}", b"x" * 10) == b"STORED\r\n"
        for i in range(n_gets):
            assert c.get(f"m_{i}") == b"x" * 10
        before = c.stats()
        ctype, text = scrape(metrics_server)
        after = c.stats()
        lat = latency(c)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    fams = families(text)
    counters = [f for f in fams.values() if f.type == "counter"]
    assert len(counters) > 30, sorted(fams)
    for f in counters:
        assert f.name.startswith("keel_"), f.name
        stat = f.name[len("keel_"):]
        stat = stat if stat in before else "keel_" + stat
        assert stat in before, f"{f.name}: no such stat"
        shards = {smp.labels["shard"] for smp in f.samples}
        assert shards == {"0", "1"}, (f.name, shards)
        total = sum(smp.value for smp in f.samples)
        assert int(before[stat]) <= total <= int(after[stat]), (f.name, before[stat], total,
                                                                after[stat])
    assert sum(s.value for s in fams["keel_cmd_set"].samples) == n_sets
    assert sum(s.value for s in fams["keel_curr_items"].samples) == n_sets
    assert fams["keel_curr_items"].type == "gauge"
    hist = fams["keel_request_duration_seconds"]
    assert hist.type == "histogram"
    assert per_command_count(fams, "set") == n_sets == lat["set"]["count"]
    assert per_command_count(fams, "get") == n_gets == lat["get"]["count"]
    for stage in ["raftlog_flush", "raft_commit", "raft_apply"]:
        f = fams[f"keel_{stage}_duration_seconds"]
        count = sum(s.value for s in f.samples if s.name.endswith("_count"))
        # Read after the scrape: a checkpoint's raftlog compaction may have flushed meanwhile.
        assert 1 <= count <= lat[stage]["count"], stage
        buckets = [s for s in f.samples if s.name.endswith("_bucket")]
        assert any(s.labels["le"] == "+Inf" for s in buckets)


def test_metrics_other_paths_are_404(metrics_server):
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(metrics_server, "/")
    assert e.value.code == 404
    # The node still serves memcached clients and further scrapes.
    with metrics_server.connect() as c:
        assert c.call(b"version\r\n").startswith(b"VERSION ")
    assert "keel_cmd_get_total" in scrape(metrics_server)[1]
