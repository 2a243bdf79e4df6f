"""Top-K recommendations rank exactly as `ripple evaluate` does: same scores, same order, same exclusions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.checkpoint import Checkpoint
from operators.encoder import EncoderConfig
from operators.offline.datasets import Case, Interaction
from operators.offline.evaluation import GraphScorer, rank_of_targets
from operators.recommend import ItemRanker, exclude_items

VOCAB = [f"i{n}" for n in range(300)]


def histories(seed: int, users: int = 12) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for u in range(users):
        n = int(rng.integers(1, 30))
        items = [VOCAB[int(i)] for i in rng.integers(0, len(VOCAB), n)] + ["never-trained"]
        events = [Interaction(f"{u}-{t}", item, "view", 1_767_225_600.0 + 60 * t) for t, item in enumerate(items)]
        cases.append(Case(f"u{u}", events, target=""))
    return cases


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return Checkpoint.seeded(EncoderConfig(dim=16, norm_scale=8.0), seed=3, vocab=VOCAB)


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_the_top_k_are_evaluates_ranks_1_to_k_with_its_scores(checkpoint, exclude_seen):
    cases = histories(seed=1)
    scorer = GraphScorer(checkpoint)  # what `ripple evaluate` scores with
    scores = scorer.scores(cases)
    if exclude_seen:
        scores = exclude_items(scores, scorer.index, [[ev.item_id for ev in c.history] for c in cases])
    seen = [[ev.item_id for ev in c.history] for c in cases] if exclude_seen else None
    ranked = ItemRanker(checkpoint).top(scorer.user_vectors(cases), k=25, seen=seen)
    for i, (case, items) in enumerate(zip(cases, ranked, strict=True)):
        assert len(items) == 25
        rows = torch.tensor([scorer.index.row(item) for item, _ in items])
        ranks = rank_of_targets(scores[i].expand(len(items), -1), rows)
        assert ranks.tolist() == list(range(1, 26)), case.user_id
        np.testing.assert_array_equal(np.float32([s for _, s in items]), scores[i, rows].numpy())
        if exclude_seen:
            assert not {item for item, _ in items} & {ev.item_id for ev in case.history}


def test_ties_are_ordered_by_vocabulary_row_and_excluded_items_never_come_back():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    ranker = ItemRanker.from_vectors(["a", "b", "c", "d", "e"], vectors)
    user = np.array([[2.0, 1.0]], dtype=np.float32)
    assert [item for item, _ in ranker.top(user, k=3)[0]] == ["a", "c", "d"]
    assert [item for item, _ in ranker.top(user, k=2)[0]] == ["a", "c"]
    # More than there are: every item once; with exclusions, only what is left.
    assert [item for item, _ in ranker.top(user, k=50)[0]] == ["a", "c", "d", "b", "e"]
    assert [item for item, _ in ranker.top(user, k=50, seen=[["a", "d", "zzz"]])[0]] == ["c", "b", "e"]


def test_a_model_without_items_refuses_to_rank():
    with pytest.raises(ValueError, match="no item vocabulary"):
        ItemRanker(Checkpoint.seeded()).top(np.zeros((1, 64), np.float32), k=5)
