"""The served session-kNN: a user graph queries as its history, the mix ranks by hand, the checkpoint keeps it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_state import GraphConfig, UserGraph
from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.item_index import ItemIndex
from operators.offline.datasets import Interaction
from operators.recommend import ItemRanker
from operators.session_knn import KNNConfig, KNNMix, Queries, SessionIndex, SessionKNN, best_scaled

VOCAB = list("abcdefg")
TRAIN = ["abc", "bd", "acec", "fg", "da"]  # time = line number, as in the kNN baseline tests
INDEX = ItemIndex(VOCAB, 1)


def sessions(train=TRAIN) -> SessionIndex:
    return SessionIndex([list(s) for s in train], [float(t) for t in range(len(train))], INDEX)


def graph_of(items: str | list[str], max_nodes: int = 50, user: str = "u") -> UserGraph:
    g = UserGraph(GraphConfig(max_nodes=max_nodes))
    for i, item in enumerate(items):
        g.apply(Interaction(f"{user}:{i}", item, ts=float(i)))
    return g


CONFIGS = [
    KNNConfig("sknn", k=3, sample_size=4),
    KNNConfig("vsknn", k=3, sample_size=4, weighting="div", score_weighting="linear"),
    KNNConfig("stan", k=3, sample_size=4, lambda_spw=1.5, lambda_snh=2.0, lambda_inh=1.0),
]


@settings(max_examples=40, deadline=None)
@given(
    train=st.lists(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6), min_size=1, max_size=12),
    queries=st.lists(st.lists(st.sampled_from([*VOCAB, "new"]), min_size=1, max_size=8), min_size=1, max_size=5),
    when=st.floats(min_value=-1.0, max_value=14.0),
)
def test_a_user_graph_queries_exactly_as_its_history(train, queries, when):
    index = SessionIndex(train, [float(t) for t in range(len(train))], INDEX)
    graphs = [graph_of(q, user=f"u{n}") for n, q in enumerate(queries)]
    times = [when] * len(queries)
    for cfg in CONFIGS:
        knn = SessionKNN(index, cfg)
        from_graphs = knn.scores(Queries.of_graphs(graphs, INDEX, times))
        from_histories = knn.scores(Queries.of_histories(queries, times, INDEX))
        assert torch.equal(from_graphs, from_histories), cfg.kind


def test_a_served_graph_is_after_all_of_training():
    # sample 2 of the sessions holding "b" or "a": the two most recent (4 "da", 2 "acec"), as for a test case
    knn = SessionKNN(sessions(), KNNConfig("sknn", k=5, sample_size=2))
    served = knn.neighbours(Queries.of_graphs([graph_of("ba")], INDEX))
    assert sorted(served["session"].tolist()) == [2, 4]
    later = knn.neighbours(Queries.of_histories([list("ba")], [100.0], INDEX))
    assert all(np.array_equal(served[k], later[k]) for k in served)
    # inside the training period the nearest sessions on both sides are the candidates instead
    inside = knn.neighbours(Queries.of_graphs([graph_of("ba")], INDEX, [0.4]))
    assert sorted(inside["session"].tolist()) == [0, 1]


def test_a_graph_window_drops_the_evicted_items_from_the_query():
    # window 2: "a" is evicted by "c"; the query is {b at 2, c at 3} of L = 3 events
    q = Queries.of_graphs([graph_of("abc", max_nodes=2)], INDEX)
    assert sorted(zip(q.item_row.tolist(), q.item_pos.tolist(), strict=True)) == [(1, 2), (2, 3)]
    assert q.length.tolist() == [3]
    # against the history whose first item matches nothing (but still counts in STAN's norm), every
    # similarity is larger by the ratio of the norms, so the same neighbours score that much more
    knn = SessionKNN(sessions(), KNNConfig("stan", k=5, sample_size=5, lambda_spw=1.0))
    unknown_first = knn.scores(Queries.of_histories([["gone", "b", "c"]], [math.inf], INDEX))
    w1 = [math.exp(-2.0), math.exp(-1.0), 1.0]  # positions 1, 2, 3 of 3, λ1 = 1
    ratio = math.sqrt(sum(w * w for w in w1)) / math.sqrt(sum(w * w for w in w1[1:]))
    got = knn.scores(q)
    held = unknown_first > 0
    torch.testing.assert_close(got[held], unknown_first[held] * ratio)
    assert torch.equal(got[~held], unknown_first[~held])


def mixed_checkpoint(weight: float = 2.0) -> Checkpoint:
    plain = Checkpoint.seeded(EncoderConfig(dim=8), seed=4, vocab=VOCAB)
    index = SessionIndex([list("ab"), list("abc"), list("bd")], [0.0, 1.0, 2.0], plain.index)
    return dataclasses.replace(plain, knn_mix=KNNMix(SessionKNN(index, KNNConfig("sknn", k=2)), weight))


def test_the_mix_adds_the_weighted_best_scaled_knn_score_to_user_dot_item():
    ckpt = mixed_checkpoint(weight=2.0)
    ranker = ItemRanker(ckpt)
    users = torch.randn(2, 8)
    graphs = [graph_of("a"), graph_of("z")]  # "z" is outside the vocabulary: no neighbour, no kNN term
    # query {a}: neighbours "ab" (1/√2) and "abc" (1/√3), so a and b score both, c one; items no neighbour
    # holds score -1 + events / (3 + 1) by popularity: d (1 event) -0.75, e, f, g (none) -1; all over the best
    s = 1 / math.sqrt(2) + 1 / math.sqrt(3)
    knn_a = torch.tensor([s, s, 1 / math.sqrt(3), -0.75, -1.0, -1.0, -1.0]) / s
    expected = users @ ranker.item_vectors.T
    expected[0] += 2.0 * knn_a
    torch.testing.assert_close(ranker.scores(users, graphs), expected)


def test_best_scaled_rows_top_at_one_and_rows_without_neighbours_are_zero():
    got = best_scaled(torch.tensor([[4.0, 1.0, -0.5], [-0.2, -0.9, -0.7]]))
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.25, -0.125], [0.0, 0.0, 0.0]]))


def test_a_ranker_with_a_mix_needs_the_graphs():
    ranker = ItemRanker(mixed_checkpoint())
    with pytest.raises(ValueError, match=r"mixes SKNN w=2 into its ranking, which needs each user's graph"):
        ranker.top(np.zeros((1, 8), np.float32), k=3)
    assert [item for item, _ in ranker.top(np.zeros((1, 8), np.float32), k=2, graphs=[graph_of("a")])[0]] == ["a", "b"]


def test_the_mix_travels_in_the_checkpoint_and_is_part_of_the_model_version(tmp_path):
    ckpt = mixed_checkpoint()
    plain = dataclasses.replace(ckpt, knn_mix=None)
    assert ckpt.model_version != plain.model_version
    assert mixed_checkpoint(weight=3.0).model_version != ckpt.model_version
    version = ckpt.save(tmp_path / "m.ckpt")
    loaded = Checkpoint.load(tmp_path / "m.ckpt")
    assert loaded.model_version == version and loaded.knn_mix is not None
    assert loaded.knn_mix.knn.config == ckpt.knn_mix.knn.config and loaded.knn_mix.weight == 2.0
    users, graphs = torch.randn(3, 8), [graph_of("ab"), graph_of("db"), graph_of("c")]
    assert torch.equal(ItemRanker(loaded).scores(users, graphs), ItemRanker(ckpt).scores(users, graphs))
    plain.save(tmp_path / "plain.ckpt")
    assert Checkpoint.load(tmp_path / "plain.ckpt").knn_mix is None


def test_a_damaged_mix_is_refused_with_the_fix(tmp_path):
    ckpt = mixed_checkpoint()
    ckpt.save(tmp_path / "m.ckpt")
    payload = torch.load(tmp_path / "m.ckpt", weights_only=True)
    payload["knn_mix"]["counts"] = payload["knn_mix"]["counts"][:3]
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"cannot be read .*does not fit its vocabulary.*`ripple mix`"):
        Checkpoint.load(tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="positive number"):
        KNNMix(ckpt.knn_mix.knn, 0.0)
