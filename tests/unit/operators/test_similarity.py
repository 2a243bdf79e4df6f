"""Similarity edges: k nearest neighbours by item vectors within each user graph."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from graph_state import GraphConfig, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig, graphs_to_batch
from operators.encoder import knn_edges
from operators.explain import explain
from operators.item_features import ItemFeatures
from tests.conftest import Ev, random_stream


def brute_force(vectors: np.ndarray, ptr: list[int], k: int) -> set[tuple[int, int]]:
    edges = set()
    for a, b in itertools.pairwise(ptr):
        for i in range(a, b):
            scores = [(-float(np.float32(vectors[i] @ vectors[j])), j) for j in range(a, b) if j != i]
            for _, j in sorted(scores)[:k]:  # ties: the lower slot first
                edges.update({(i, j), (j, i)})
    return edges


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    k=st.integers(1, 5),
    seed=st.integers(0, 10_000),
    duplicate=st.booleans(),
)
def test_knn_edges_are_the_symmetric_top_k_of_each_graph(sizes, k, seed, duplicate):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(sum(sizes), 4, generator=gen, dtype=torch.float64)
    if duplicate and len(v) > 2:
        v[1] = v[2]  # two nodes on the same (hashed) row: an exact tie
    v = F.normalize(v, dim=-1)
    ptr = [0, *np.cumsum(sizes).tolist()]
    edges = knn_edges(v, torch.tensor(ptr), k)
    got = set(map(tuple, edges.T.tolist()))
    assert got == brute_force(v.numpy(), ptr, k)
    assert edges.T.tolist() == sorted(edges.T.tolist())  # canonical order
    # Each graph alone gives the same edges (shifted): they do not depend on the batch.
    for a, b in itertools.pairwise(ptr):
        alone = knn_edges(v[a:b], torch.tensor([0, b - a]), k) + a
        assert set(map(tuple, alone.T.tolist())) == {e for e in got if a <= e[0] < b}


def test_similar_items_are_linked_and_the_switch_is_off_by_default():
    model = Checkpoint.seeded(EncoderConfig(dim=8, similarity_k=1), seed=3)
    plain = Checkpoint.seeded(EncoderConfig(dim=8), seed=3)
    g = UserGraph(GraphConfig())
    for n, item in enumerate("abcdab"):
        g.apply(Ev(str(n), item, ts=float(n)))
    b = graphs_to_batch([g], model.index)
    sim = model.encoder.similarity_edges(b)
    assert sim is not None and sim.shape[1] >= 3  # every node has a neighbour; each edge in both directions
    assert set(map(tuple, sim.T.tolist())) == {(d, s) for s, d in sim.T.tolist()}
    assert plain.encoder.similarity_edges(b) is None
    assert all(layer.sim is None for layer in plain.encoder.layers)
    assert all(layer.sim is not None for layer in model.encoder.layers)


def test_a_user_embeds_the_same_alone_or_in_a_batch():
    ckpt = Checkpoint.seeded(EncoderConfig(dim=16, layers=2, similarity_k=3), seed=4)
    graphs: dict[str, UserGraph] = {}
    for ev in random_stream(11, 300, n_users=6, n_items=40):
        graphs.setdefault(ev.user_id, UserGraph(GraphConfig(max_nodes=20))).apply(ev)
    users = sorted(graphs)
    together = Embedder(ckpt).embed_many([graphs[u] for u in users])
    for i, u in enumerate(users):
        np.testing.assert_allclose(together[i], Embedder(ckpt).embed_one(graphs[u]), atol=1e-5)


def test_explanations_stay_additive_with_similarity_edges_and_side_features():
    features = ItemFeatures.from_tokens({f"i{n}": [f"g={n % 3}"] for n in range(10)}, "mem")
    vocab = [f"i{n}" for n in range(10)]
    ckpt = Checkpoint.seeded(EncoderConfig(dim=8, similarity_k=2), vocab=vocab, features=features)
    g = UserGraph(GraphConfig())
    for n, item in enumerate(["i1", "i2", "i3", "x", "i1", "i4"]):
        g.apply(Ev(str(n), item, ts=float(n)))
    parts = explain(ckpt, g)
    assert abs(sum(p.share for p in parts) - 1.0) < 1e-4 and len(parts) == 5
