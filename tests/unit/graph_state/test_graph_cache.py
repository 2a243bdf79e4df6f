"""The decoded-graph cache bounded by memory: graph footprints, and the LRU that budgets by them."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from graph_state import GraphConfig, MemoryStore, UserGraph, decode, encode
from graph_state.store import CachedStore
from stream_app.core.metrics import Metrics
from stream_app.core.records import RawRecord
from stream_app.core.serving import build_pipeline
from stream_app.core.settings import Settings
from tests.conftest import BASE_TS, Ev, random_stream, to_json


def grown(events: int, items: int, seed: int, config: GraphConfig) -> UserGraph:
    rng = random.Random(seed)
    graph = UserGraph(config)
    for n in range(events):
        graph.apply(Ev(event_id=f"{seed}-{n}", item_id=f"i{rng.randrange(items)}", ts=BASE_TS + n))
    return graph


def measured(records: list[bytes], config: GraphConfig, write: bool, cache_rows: int) -> tuple[float, float]:
    """Bytes per graph as ``tracemalloc`` counts them and as ``footprint`` estimates them: graphs decoded
    from ``records`` (``write``: then one more event applied, as a runner holds them after a batch)."""
    tracemalloc.start()
    # Each record copied while traced: a decoded graph's blocks view its record and keep it alive.
    graphs = [decode(bytes(bytearray(raw)), config) for raw in records]
    for graph in graphs:
        if write:
            graph.apply(Ev(event_id="next", item_id="new item", ts=graph.last_ts + 1))
        if cache_rows:
            graph.cache = np.zeros((3, cache_rows, 64), dtype=np.float32)
    traced = tracemalloc.get_traced_memory()[0] / len(graphs)
    tracemalloc.stop()
    return traced, sum(g.footprint() for g in graphs) / len(graphs)


@pytest.mark.parametrize(
    ("events", "items", "max_nodes", "cache_rows"),
    [
        (3, 5, 50, 0),
        (10, 50, 50, 0),
        (100, 60, 50, 0),
        (400, 1000, 50, 0),
        (2000, 10**6, 1000, 0),
        (2000, 10**6, 1000, 1000),
    ],
)
@pytest.mark.parametrize("write", [False, True])
def test_footprint_is_within_a_quarter_of_what_tracemalloc_counts(events, items, max_nodes, cache_rows, write):
    config = GraphConfig(max_nodes=max_nodes)
    records = [encode(grown(events, items, seed, config)) for seed in range(100)]
    traced, estimate = measured(records, config, write, cache_rows)
    assert 0.75 <= estimate / traced <= 1.25, (traced, estimate)


def test_the_cache_keeps_its_graphs_under_the_byte_budget_evicting_the_least_recent():
    config = GraphConfig()
    inner = MemoryStore(config)
    graphs = {f"u{n}": grown(20, 100, n, config) for n in range(10)}
    one = max(g.footprint() for g in graphs.values())
    store = CachedStore(inner, capacity=100, max_bytes=4 * one)
    store.put_many(graphs)
    assert 3 <= len(store) <= 4 and list(store._lru) == [f"u{n}" for n in range(10 - len(store), 10)]
    assert store.nbytes == sum(g.footprint() for g in store._lru.values()) <= 4 * one
    # A hit moves a user to the most recent end; the next insert evicts the least recent instead.
    oldest = next(iter(store._lru))
    store.get_many([oldest])
    store.put_many({"new": grown(20, 100, 99, config)})
    assert oldest in store._lru and store.nbytes <= 4 * one
    # Every graph is still readable (write-through): the evicted ones come back from the store as they were.
    back = store.get_many(list(graphs))
    assert all(encode(back[uid]) == encode(graphs[uid]) for uid in graphs)


def test_a_graph_that_grows_is_measured_again_when_written():
    config = GraphConfig(max_nodes=1000)
    store = CachedStore(MemoryStore(config), capacity=100, max_bytes=1 << 30)
    graph = grown(5, 10**6, 0, config)
    store.put_many({"u": graph})
    before = store.nbytes
    for n in range(500):
        graph.apply(Ev(event_id=f"more-{n}", item_id=f"new-{n}", ts=graph.last_ts + 1))
    store.put_many({"u": graph})
    assert store.nbytes == graph.footprint() > 10 * before
    store.delete("u")
    assert store.nbytes == 0 and len(store) == 0
    store.put_many({"a": grown(5, 10, 1, config), "b": grown(5, 10, 2, config)})
    store.clear()
    assert store.nbytes == 0 and len(store) == 0


def test_a_budget_below_one_graph_caches_nothing_and_loses_nothing():
    config = GraphConfig()
    store = CachedStore(MemoryStore(config), capacity=100, max_bytes=100)
    graph = grown(10, 50, 0, config)
    store.put_many({"u": graph})
    assert len(store) == 0 and store.nbytes == 0
    assert encode(store.get_many(["u"])["u"]) == encode(graph)


def test_the_settings_budget_reaches_the_pipelines_cache():
    pipeline = build_pipeline(Settings.from_env({"RIPPLE_GRAPH_CACHE_MB": "64"}), MemoryStore(GraphConfig()))
    assert isinstance(pipeline.store, CachedStore) and pipeline.store.max_bytes == 64 << 20
    with pytest.raises(ValueError, match="graph_cache_mb=-1"):
        Settings.from_env({"RIPPLE_GRAPH_CACHE_MB": "-1"})


def test_the_cache_footprint_is_a_gauge_read_at_scrape_time():
    metrics = Metrics()
    pipeline = build_pipeline(Settings.from_env({}), MemoryStore(GraphConfig()), metrics)
    records = [RawRecord(value=to_json(ev), source="t", offset=n) for n, ev in enumerate(random_stream(0, 50))]
    pipeline.commit(pipeline.process(records))
    value = metrics.registry.get_sample_value("ripple_graph_cache_bytes")
    assert isinstance(pipeline.store, CachedStore) and value == pipeline.store.nbytes > 0
