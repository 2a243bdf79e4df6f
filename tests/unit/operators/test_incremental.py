"""Incremental L-hop recompute equals a full recompute (docs/architecture.md, invariants)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, MemoryStore, UserGraph, decode, encode
from operators import Checkpoint, Embedder, EncoderConfig, IncrementalPolicy
from operators.incremental import affected_sets
from operators.item_features import ItemFeatures
from stream_app import Pipeline, RawRecord
from tests.conftest import Ev, random_stream, to_json

ALWAYS = IncrementalPolicy(full_share=1.0, min_nodes=1)
MODELS = [Checkpoint.seeded(EncoderConfig(dim=16, layers=layers), seed=layers) for layers in (1, 2, 3)]


def full_layers(graph: UserGraph, ckpt: Checkpoint) -> np.ndarray:
    fresh = decode(encode(graph), graph.config)
    fresh.cache_key, fresh.cache = "", b""
    vec = Embedder(ckpt, ALWAYS).embed_changed([fresh], [None])
    return vec[0], np.frombuffer(fresh.cache, dtype=np.float32)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(5, 160),
    max_nodes=st.integers(2, 25),
    batch_size=st.integers(1, 20),
    model=st.integers(0, 2),
    swap_at=st.none() | st.integers(0, 160),
    dup_every=st.none() | st.integers(2, 9),
)
def test_incremental_equals_full(seed, n, max_nodes, batch_size, model, swap_at, dup_every):
    events = random_stream(seed, n, n_users=3, n_items=30)
    records = [RawRecord(to_json(ev)) for ev in events]
    if dup_every:
        records = [
            r for i, rec in enumerate(records) for r in ([rec, records[i // 2]] if i % dup_every == 0 else [rec])
        ]
    store = MemoryStore(GraphConfig(max_nodes=max_nodes))
    ckpt = MODELS[model]
    pipeline = Pipeline(store, Embedder(ckpt, ALWAYS))
    pipelines = [pipeline]
    for start in range(0, len(records), batch_size):
        if swap_at is not None and start >= swap_at and ckpt is MODELS[model]:
            ckpt = MODELS[(model + 1) % 3]  # a model reload: every cache is now stale
            pipeline = Pipeline(store, Embedder(ckpt, ALWAYS))
            pipelines.append(pipeline)
        result = pipeline.process(records[start : start + batch_size])
        pipeline.commit(result)
        for emb in result.embeddings:
            graph = store.get_many([emb.user_id])[emb.user_id]
            vec, layers = full_layers(graph, ckpt)
            np.testing.assert_allclose(emb.embedding, vec, atol=1e-5)
            if emb.user_id in result.graphs:  # republished duplicates store nothing
                np.testing.assert_allclose(np.frombuffer(graph.cache, dtype=np.float32), layers, atol=1e-5)
    # Something was embedded (after a swap late in a short stream, only by the first model).
    assert sum(p.embedder.incremental.stats["full"] + p.embedder.incremental.stats["incremental"] for p in pipelines)


def test_incremental_path_is_taken_and_recomputes_few_nodes():
    cfg = GraphConfig(max_nodes=200)
    store = MemoryStore(cfg)
    embedder = Embedder(Checkpoint.seeded(EncoderConfig(dim=16)), IncrementalPolicy())
    pipeline = Pipeline(store, embedder)
    events = [Ev(f"e{n}", f"i{n % 150}", "view", 1_767_225_600.0 + n, None, "u") for n in range(400)]
    for ev in events:
        pipeline.commit(pipeline.process([RawRecord(to_json(ev))]))
    stats = embedder.incremental.stats
    assert stats["incremental"] > 300
    assert stats["recomputed_nodes"] < 0.2 * stats["total_nodes"]


def test_mid_size_graphs_take_the_incremental_path_only_when_enough_share_the_batch():
    """``batched_min_nodes`` <= n < ``min_nodes``: incremental when ``batched_min_graphs`` such graphs
    are in the micro-batch (the path's fixed cost is shared), fully recomputed when fewer; the vectors
    equal the full forward's either way."""
    cfg = GraphConfig(max_nodes=40)
    store = MemoryStore(cfg)
    ckpt = Checkpoint.seeded(EncoderConfig(dim=16))
    policy = IncrementalPolicy(min_nodes=64, batched_min_nodes=32, batched_min_graphs=12)
    embedder = Embedder(ckpt, policy)
    pipeline = Pipeline(store, embedder)
    ts = 1_767_225_600.0

    def batch(users: range, step: int, check: bool = False) -> None:
        evs = [Ev(f"{u}-{step}", f"i{(step * 7 + u) % 90}", "view", ts + step, None, f"u{u}") for u in users]
        result = pipeline.process([RawRecord(to_json(ev)) for ev in evs])
        pipeline.commit(result)
        for emb in result.embeddings if check else []:
            graph = store.get_many([emb.user_id])[emb.user_id]
            np.testing.assert_allclose(emb.embedding, full_layers(graph, ckpt)[0], atol=1e-5)

    for step in range(45):  # every graph fills its 40-node window
        batch(range(15), step)
    before = dict(embedder.incremental.stats)
    batch(range(15), 45, check=True)  # 15 mid-size graphs >= 12: incremental
    assert embedder.incremental.stats["incremental"] - before["incremental"] == 15
    batch(range(5), 46, check=True)  # 5 < 12: all fully recomputed
    assert embedder.incremental.stats["incremental"] - before["incremental"] == 15
    assert embedder.incremental.stats["full"] - before["full"] == 5
    # ... and under such light load their caches are dropped (memory), the others' kept.
    cached = store.get_many([f"u{u}" for u in range(15)])
    assert [cached[f"u{u}"].has_cache for u in range(15)] == [False] * 5 + [True] * 10


def test_affected_sets_grow_by_one_hop_per_layer():
    g = UserGraph(GraphConfig())
    for n, item in enumerate("abcdef"):  # a path a→b→c→d→e→f
        g.apply(Ev(str(n), item))
    c = g.slot_of("c")
    sets = affected_sets(g, {c}, 3)
    names = [{g.item_ids[s] for s in level} for level in sets]
    assert names == [set("bcd"), set("abcde"), set("abcdef")]


SIDE_FEATURES = ItemFeatures.from_tokens({f"i{n}": [f"g={n % 4}", f"h={n % 3}"] for n in range(0, 30, 2)}, "mem")
OPTIONAL_MODELS = [
    Checkpoint.seeded(EncoderConfig(dim=16), seed=5, vocab=[f"i{n}" for n in range(20)], features=SIDE_FEATURES),
    Checkpoint.seeded(EncoderConfig(dim=16, layers=2, similarity_k=2), seed=6),
    Checkpoint.seeded(EncoderConfig(dim=16, layers=1, similarity_k=4), seed=7, features=SIDE_FEATURES),
]


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(5, 120),
    max_nodes=st.integers(2, 25),
    batch_size=st.integers(1, 20),
    model=st.integers(0, 2),
)
def test_incremental_equals_full_with_side_features_and_similarity_edges(seed, n, max_nodes, batch_size, model):
    # Similarity edges can change anywhere in the graph when one item arrives or leaves, so
    # those models take the exact full forward for every user; side features keep the
    # incremental path (they change node inputs only). Both must publish the from-scratch vector.
    events = random_stream(seed, n, n_users=3, n_items=30)
    store = MemoryStore(GraphConfig(max_nodes=max_nodes))
    ckpt = OPTIONAL_MODELS[model]
    pipeline = Pipeline(store, Embedder(ckpt, ALWAYS))
    records = [RawRecord(to_json(ev)) for ev in events]
    for start in range(0, len(records), batch_size):
        result = pipeline.process(records[start : start + batch_size])
        pipeline.commit(result)
        for emb in result.embeddings:
            graph = store.get_many([emb.user_id])[emb.user_id]
            vec, _ = full_layers(graph, ckpt)
            np.testing.assert_allclose(emb.embedding, vec, atol=1e-5)
            alone = Embedder(ckpt).embed_one(decode(encode(graph), graph.config))
            np.testing.assert_allclose(emb.embedding, alone, atol=1e-5)
    stats = pipeline.embedder.incremental.stats
    if ckpt.config.similarity_k:
        assert stats["incremental"] == 0 and stats["full"] > 0
