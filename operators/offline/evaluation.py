"""Next-item evaluation with full ranking: Recall@K (= HR@K, SR-GNN's "P@K"), MRR@K, NDCG@K.

Every case is scored against every item of the model's vocabulary. The rank of the
target is ``1 + (items scored higher) + (other items scored equal) / 2``, so ties cost
half their size instead of favouring or punishing the target; a target outside the
vocabulary (never seen in training) is a miss. With ``exclude_seen`` the items of a
case's history are scored ``-inf`` (for data where an item is never consumed twice).

>>> ranks = rank_of_targets(torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7]]), torch.tensor([2, 0]))
>>> ranks.tolist()
[2.0, 2.5]
>>> m = rank_metrics(ranks, ks=(2,))
>>> round(m["recall@2"], 4), round(m["mrr@2"], 4)
(0.5, 0.25)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from graph_state import GraphConfig
from operators.checkpoint import Checkpoint
from operators.graph_settings import graph_config_of
from operators.inference import Embedder
from operators.item_index import ItemIndex
from operators.offline.datasets import Case, case_graph, case_times, target_row
from operators.recommend import ItemRanker, exclude_items

DEFAULT_KS: tuple[int, ...] = (10, 20)
METRICS = ("recall", "mrr", "ndcg")


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among all columns (float; ``inf`` when target < 0)."""
    known = targets >= 0
    picked = scores.gather(1, targets.clamp(min=0).unsqueeze(1))
    greater = (scores > picked).sum(dim=1)
    ties = (scores == picked).sum(dim=1) - 1
    ranks = 1.0 + greater.to(torch.float64) + ties.to(torch.float64) / 2.0
    return torch.where(known, ranks, torch.full_like(ranks, math.inf))


def rank_metrics(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall@K, MRR@K and NDCG@K over all cases from their target ranks."""
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out: dict[str, float] = {}
    n = max(1, r.numel())
    for k in ks:
        hit = r <= k
        safe = torch.where(hit, r, torch.ones_like(r))
        out[f"recall@{k}"] = float(hit.sum()) / n
        out[f"mrr@{k}"] = float(torch.where(hit, 1.0 / safe, torch.zeros_like(r)).sum()) / n
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(safe + 1.0), torch.zeros_like(r)).sum()) / n
    return out


@dataclass
class Report:
    """Metrics of one model on one set of cases."""

    name: str
    metrics: dict[str, float]
    cases: int
    seconds: float
    info: dict[str, float | int | str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "metrics": self.metrics, "cases": self.cases, "seconds": self.seconds, **self.info}


class Scorer:
    """Scores cases against a vocabulary; subclasses implement :meth:`scores`."""

    name = "scorer"
    index: ItemIndex

    @property
    def n_items(self) -> int:
        return len(self.index.vocab)

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:  # [B, n_items]
        raise NotImplementedError


def evaluate(
    scorer: Scorer,
    cases: Sequence[Case],
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 512,
    exclude_seen: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Full-ranking metrics of ``scorer`` on ``cases``."""
    started = time.perf_counter()
    ranks: list[torch.Tensor] = []
    index = scorer.index
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        with torch.inference_mode():
            scores = scorer.scores(chunk).to(torch.float32)
            if exclude_seen:
                scores = exclude_items(scores, index, [[ev.item_id for ev in case.history] for case in chunk])
            targets = torch.tensor([target_row(index, c.target) for c in chunk], dtype=torch.long)
            ranks.append(rank_of_targets(scores, targets))
        if progress is not None:
            progress(len(chunk))
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.float64)
    return Report(scorer.name, rank_metrics(all_ranks, ks), len(cases), time.perf_counter() - started)


class GraphScorer(Scorer):
    """The serving path: history → ``UserGraph.apply`` → ``Embedder.embed_many`` → user · item vectors.

    The scores are :meth:`operators.recommend.ItemRanker.scores`, the ones ``ripple recommend``
    and the worker's recommendations rank by; a checkpoint's kNN mix queries the same graphs, each
    at its case's time (as the kNN baselines do) where a served user is after all of training.
    """

    def __init__(self, checkpoint: Checkpoint, graph_config: GraphConfig | None = None, name: str = "") -> None:
        self.checkpoint = checkpoint
        self.embedder = Embedder(checkpoint)
        self.index = checkpoint.index
        self.graph_config = graph_config or graph_config_of(checkpoint)
        self.name = name or checkpoint.config.conv.upper()
        self.ranker = ItemRanker(checkpoint)
        self.item_vectors = self.ranker.item_vectors

    def user_vectors(self, cases: Sequence[Case]) -> np.ndarray:
        return self.embedder.embed_many([case_graph(c, self.graph_config) for c in cases])

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        graphs = [case_graph(c, self.graph_config) for c in cases]
        return self.ranker.scores(self.embedder.embed_many(graphs), graphs, case_times(cases))
