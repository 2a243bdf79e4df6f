"""Recommendations from a user's fresh vector: the serving model's item ranking, for records, views and the CLI.

One :class:`Recommender` per process keeps the :class:`operators.recommend.ItemRanker` of
the serving checkpoint (its item vectors, normalised once) and builds a new one the first
time it is asked after a live model swap. The ranking is ``ripple evaluate``'s: user ·
item over the whole vocabulary, ties by vocabulary row; "seen" items are the items of the
user's graph (the last ``RIPPLE_MAX_NODES`` distinct items). A model made by ``ripple mix`` adds
its session-kNN score of the user's graph to every item's score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from graph_state import UserGraph
from operators import Checkpoint
from operators.recommend import E_NO_ITEMS, ItemRanker
from stream_app.core.records import Recommended

DEFAULT_K = 20
MAX_K = 1000
E_BAD_K = "k must be an integer between 1 and {most} (got {value!r})."
E_BAD_FLAG = "exclude_seen must be 0, 1, true or false (got {value!r})."


class Recommender:
    """Top-K items for user vectors with the ranker of whatever checkpoint serves now.

    ``top`` and ``exclude_seen`` are the defaults of :meth:`top_many` (``RIPPLE_RECOMMEND_TOP``,
    ``RIPPLE_RECOMMEND_EXCLUDE_SEEN``); ``top == 0`` makes :meth:`top_many` return ``None``
    per user (the record leaves ``recommendations`` out).
    """

    def __init__(self, top: int = 0, exclude_seen: bool = False) -> None:
        self.top = top
        self.exclude_seen = exclude_seen
        self._ranker: ItemRanker | None = None

    def ranker(self, checkpoint: Checkpoint) -> ItemRanker:
        ranker = self._ranker
        if ranker is None or ranker.model_version != checkpoint.model_version:
            ranker = self._ranker = ItemRanker(checkpoint)
        return ranker

    def check(self, checkpoint: Checkpoint) -> None:
        """Refuse a model that cannot rank items while records must carry recommendations."""
        if self.top > 0 and not checkpoint.index.vocab:
            raise ValueError("RIPPLE_RECOMMEND_TOP is set but " + E_NO_ITEMS.format(version=checkpoint.model_version))

    def top_many(
        self,
        checkpoint: Checkpoint,
        vectors: np.ndarray,
        graphs: Iterable[UserGraph],
        k: int | None = None,
        exclude_seen: bool | None = None,
    ) -> list[list[Recommended] | None]:
        """One list per vector (row ``i`` belongs to ``graphs[i]``), or ``None`` each when off (``k`` 0)."""
        graphs = list(graphs)
        k = self.top if k is None else k
        if k <= 0:
            return [None] * len(graphs)
        exclude = self.exclude_seen if exclude_seen is None else exclude_seen
        seen = [g.items() for g in graphs] if exclude else None
        ranked = self.ranker(checkpoint).top(vectors, k, seen, graphs)
        return [[Recommended(item, score) for item, score in items] for items in ranked]


def parse_request(query: Mapping[str, str]) -> tuple[int, bool]:
    """``k`` and ``exclude_seen`` of a request's query string; ``ValueError`` with the message to answer."""
    raw_k = query.get("k", str(DEFAULT_K))
    try:
        k = int(raw_k)
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_K:
        raise ValueError(E_BAD_K.format(most=MAX_K, value=raw_k))
    raw = str(query.get("exclude_seen", "0")).lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(E_BAD_FLAG.format(value=raw))
    return k, raw in ("1", "true", "yes")


def recommendations_of(
    recommender: Recommender,
    checkpoint: Checkpoint,
    vectors: np.ndarray,
    user_ids: Sequence[str],
    graphs: Sequence[UserGraph],
    k: int,
    exclude_seen: bool,
) -> list[dict]:
    """The answer of ``GET /users/{id}/recommendations`` and ``ripple recommend --json``, one per user."""
    ranked = recommender.top_many(checkpoint, vectors, graphs, k, exclude_seen)
    return [
        {
            "user_id": uid,
            "model_version": checkpoint.model_version,
            "state_version": g.state_version,
            "k": k,
            "exclude_seen": exclude_seen,
            "items": [{"item_id": r.item_id, "score": r.score} for r in items or []],
        }
        for uid, g, items in zip(user_ids, graphs, ranked, strict=True)
    ]
