"""Full-ranking metrics against hand-computed values; baselines on tiny histories."""

from __future__ import annotations

import math

import pytest
import torch

from operators.item_index import ItemIndex
from operators.offline.baselines import ItemTransitions, MostPopular
from operators.offline.datasets import Case, Interaction, leave_one_out
from operators.offline.evaluation import Scorer, evaluate, rank_metrics, rank_of_targets


def test_ranks_count_higher_scores_and_half_the_ties():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.3, 0.5],  # target 2: items 1 and 3 above → rank 3
            [0.4, 0.4, 0.4, 0.1],  # target 0: two others tie → rank 1 + 2/2 = 2
            [0.0, 0.0, 0.0, 1.0],  # target 3: best → rank 1
            [1.0, 0.0, 0.0, 0.0],  # unknown target → miss
        ]
    )
    ranks = rank_of_targets(scores, torch.tensor([2, 0, 3, -1]))
    assert ranks[:3].tolist() == [3.0, 2.0, 1.0] and math.isinf(ranks[3])


def test_metrics_match_hand_computed_values():
    ranks = torch.tensor([1.0, 3.0, 12.0, math.inf])
    m = rank_metrics(ranks, ks=(2, 10, 20))
    assert m["recall@2"] == pytest.approx(1 / 4)
    assert m["mrr@2"] == pytest.approx(1 / 4)
    assert m["ndcg@2"] == pytest.approx(1 / 4)
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(13)) / 4)


class FixedScorer(Scorer):
    name = "fixed"

    def __init__(self, vocab: list[str], row: list[float]) -> None:
        self.index = ItemIndex(vocab, 1)
        self.row = torch.tensor(row)

    def scores(self, cases):
        return self.row.unsqueeze(0).expand(len(cases), -1)


def ev(n: int, item: str) -> Interaction:
    return Interaction(f"e{n}", item, ts=1_700_000_000.0 + n)


def test_evaluate_ranks_by_vocabulary_and_can_exclude_seen_items():
    scorer = FixedScorer(["a", "b", "c"], [3.0, 2.0, 1.0])
    cases = [Case("u", [ev(0, "a")], "b"), Case("v", [ev(1, "c")], "a"), Case("w", [ev(2, "a")], "zzz")]
    plain = evaluate(scorer, cases, ks=(1, 2))
    assert plain.metrics["recall@1"] == pytest.approx(1 / 3)  # only "a" is first
    assert plain.metrics["mrr@2"] == pytest.approx((1 / 2 + 1) / 3)
    masked = evaluate(scorer, cases, ks=(1,), exclude_seen=True)  # "a" seen by u → "b" first
    assert masked.metrics["recall@1"] == pytest.approx(2 / 3)
    assert masked.cases == 3


def test_most_popular_and_transitions_count_training_histories():
    histories = {
        "u1": [ev(0, "a"), ev(1, "b"), ev(2, "a"), ev(3, "b"), ev(4, "x"), ev(5, "y")],
        "u2": [ev(6, "a"), ev(7, "c"), ev(8, "z"), ev(9, "w")],
    }
    split = leave_one_out(histories)
    assert [len(h) for h in split.train] == [4, 2] and split.vocab == ["a", "b", "c"]
    assert [c.target for c in split.valid] == ["x", "z"] and [c.target for c in split.test] == ["y", "w"]
    pop = MostPopular(split).scores([Case("q", [], "a")])
    assert pop.tolist() == [[3.0, 2.0, 1.0]]
    trans = ItemTransitions(split).scores([Case("q", [ev(0, "a")], "b"), Case("r", [ev(0, "b")], "a")])
    # a→b twice, a→c once; b→a once; popularity only breaks ties
    assert trans[0].argsort(descending=True).tolist() == [1, 2, 0]
    assert trans[0, 1] == pytest.approx(2.0, abs=1e-5) and trans[1, 0] == pytest.approx(1.0, abs=1e-5)
