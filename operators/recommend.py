"""Top-K items for user vectors: user · item over the checkpoint's whole vocabulary, as evaluation ranks them.

:class:`ItemRanker` owns the one scoring rule of next-item prediction (the user vector
times every vocabulary item's vector, in float32) and :func:`exclude_items` the one rule
for leaving a user's own items out; :func:`operators.offline.evaluation.evaluate` (``ripple
evaluate``) and the serving paths (``ripple recommend``, the worker's recommendations
view, ``RIPPLE_RECOMMEND_TOP``) both call them. A brute-force matrix product: 43,083
items x 100 dimensions take about a millisecond per user (docs/benchmarks.md), so no
approximate index is needed at this size.

A checkpoint with a kNN mix (``ripple mix``) adds ``w · knn(item) / max knn`` to every score,
the session-kNN query built from the user's graph (:class:`operators.session_knn.KNNMix`); such
a ranker needs the users' graphs beside their vectors.

>>> ranker = ItemRanker.from_vectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
>>> ranker.top(np.array([[0.2, 1.0]], dtype=np.float32), k=2)
[[('b', 1.0), ('c', 0.6000000238418579)]]
>>> ranker.top(np.array([[0.2, 1.0]], dtype=np.float32), k=5, seen=[["b", "never-trained"]])
[[('c', 0.6000000238418579), ('a', 0.20000000298023224)]]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from graph_state import UserGraph
from operators.checkpoint import Checkpoint
from operators.item_index import ItemIndex
from operators.session_knn import KNNMix

USERS_PER_PRODUCT = 32
E_NO_ITEMS = (
    "model {version} has no item vocabulary (the seeded default model is untrained and knows no items), so it "
    "cannot rank items; train one with `ripple train` and serve it with --model / RIPPLE_MODEL_PATH."
)
E_NEEDS_GRAPHS = (
    "model {version} mixes {mix} into its ranking, which needs each user's graph beside the vector; pass graphs=."
)


def exclude_items(scores: torch.Tensor, index: ItemIndex, items: Sequence[Iterable[str]]) -> torch.Tensor:
    """``scores`` ([B, n_items]) with row ``i``'s ``items[i]`` set to ``-inf`` (items outside the vocabulary ignored).

    Returns a copy when anything is excluded (the input may be an expanded view).
    """
    rows = [[index.row(item) for item in dict.fromkeys(seen) if index.is_known(item)] for seen in items]
    if not any(rows):
        return scores
    scores = scores.clone()
    for i, cols in enumerate(rows):
        if cols:
            scores[i, cols] = -math.inf
    return scores


class ItemRanker:
    """Scores user vectors against every vocabulary item of one checkpoint and keeps the top K.

    Ties are ordered by vocabulary row (training order), so a ranking is deterministic;
    excluded items (score ``-inf``) are never returned, even when fewer than K remain.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.index = checkpoint.index
        self.model_version = checkpoint.model_version
        with torch.inference_mode():
            vectors = checkpoint.encoder.item_vectors()[: len(self.index.vocab)]
        self.item_vectors = vectors.detach().to(torch.float32).contiguous().clone()
        self.mix: KNNMix | None = checkpoint.knn_mix

    @classmethod
    def from_vectors(cls, vocab: Sequence[str], vectors: torch.Tensor, model_version: str = "") -> ItemRanker:
        """A ranker over given item vectors (row ``i`` is ``vocab[i]``)."""
        ranker = cls.__new__(cls)
        ranker.index = ItemIndex(vocab, 1)
        ranker.model_version = model_version
        ranker.item_vectors = vectors.detach().to(torch.float32).contiguous().clone()
        ranker.mix = None
        return ranker

    @property
    def n_items(self) -> int:
        return len(self.index.vocab)

    def scores(
        self,
        user_vectors: np.ndarray | torch.Tensor,
        graphs: Sequence[UserGraph] | None = None,
        when: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """``[B, n_items]`` float32: each user vector times every item vector, plus the kNN mix of ``graphs[i]``
        (queried at ``when[i]`` on the training clock; default: after all of training)."""
        users = torch.as_tensor(user_vectors, dtype=torch.float32)
        with torch.inference_mode():
            scores = users @ self.item_vectors.T
            if self.mix is None:
                return scores
            if graphs is None or len(graphs) != scores.shape[0]:
                raise ValueError(E_NEEDS_GRAPHS.format(version=self.model_version, mix=self.mix.label))
            return scores + self.mix.extra(graphs, when)

    def top_rows(self, scores: torch.Tensor, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row of ``scores``: the ``k`` best (item rows, scores), best first, ties by row, no ``-inf``."""
        k = min(k, scores.shape[1])
        if k <= 0:
            empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
            return [empty for _ in range(scores.shape[0])]
        n = scores.shape[1]
        with torch.inference_mode():
            # One more than asked: the row has ties across the cut iff the (k+1)-th score equals the k-th, and
            # which of them make the top k then depends on the row order, which topk does not promise.
            values, indices = torch.topk(scores, min(k + 1, n), dim=1)
            crowded = (values[:, k] == values[:, k - 1]).tolist() if k < n else [False] * scores.shape[0]
            values, indices = values[:, :k], indices[:, :k]
            kth = values[:, -1:]
        out = []
        for i, tie in enumerate(crowded):
            if tie:
                candidates = torch.nonzero(scores[i] >= kth[i], as_tuple=True)[0].numpy()
                best = scores[i, candidates].numpy()
            else:
                candidates, best = indices[i].numpy(), values[i].numpy()
            order = np.lexsort((candidates, -best))[:k]  # by score, then by vocabulary row
            rows, best = candidates[order], best[order]
            keep = np.isfinite(best)
            out.append((rows[keep], best[keep]))
        return out

    def top(
        self,
        user_vectors: np.ndarray | torch.Tensor,
        k: int,
        seen: Sequence[Iterable[str]] | None = None,
        graphs: Sequence[UserGraph] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per user vector: the ``k`` best ``(item_id, score)``, leaving out the items in ``seen[i]`` when given.

        ``graphs[i]`` is user ``i``'s graph, which a ranker with a kNN mix needs."""
        if self.n_items == 0:
            raise ValueError(E_NO_ITEMS.format(version=self.model_version))
        users = torch.as_tensor(user_vectors, dtype=torch.float32)
        vocab = self.index.vocab
        out = []
        # A few users at a time: their score rows stay in cache for topk (measured: ~20 % faster than all at once).
        for start in range(0, users.shape[0], USERS_PER_PRODUCT):
            chunk = None if graphs is None else graphs[start : start + USERS_PER_PRODUCT]
            scores = self.scores(users[start : start + USERS_PER_PRODUCT], chunk)
            if seen is not None:
                scores = exclude_items(scores, self.index, seen[start : start + USERS_PER_PRODUCT])
            out += [
                [(vocab[r], float(s)) for r, s in zip(rows.tolist(), best.tolist(), strict=True)]
                for rows, best in self.top_rows(scores, k)
            ]
        return out
