"""Session-kNN baselines for ``ripple evaluate``: SKNN, V-SKNN and STAN as scorers of cases, and their tuning.

The methods themselves (definitions, conventions, the batched numpy neighbour search) live
in :mod:`operators.session_knn`, which serving shares for a checkpoint that mixes STAN into its
ranking; here a case's history becomes a query at the case's time (:attr:`Case.time`, or its
last event's ts), and :func:`tune` chooses a method's hyper-parameters on validation cases.

>>> from operators.offline.datasets import Interaction, Split
>>> train = [[Interaction(f"{n}:{i}", x) for i, x in enumerate(s)] for n, s in enumerate(["ab", "abc", "bd"])]
>>> split = Split(train, [], [], ["a", "b", "c", "d"], "sessions", train_times=[0.0, 1.0, 2.0])
>>> scorer = KNNScorer(SessionIndex.from_split(split), KNNConfig("sknn", k=2))
>>> [round(x, 3) for x in scorer.scores([Case("q", [Interaction("q:0", "a")], "c", 3.0)])[0].tolist()]
[1.284, 1.284, 0.577, -0.75]

(neighbours "ab" with 1/√2 and "abc" with 1/√3; "d" is in none: -1 + 1/(3 + 1) by popularity)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from operators.offline.datasets import Case, Split, case_times
from operators.offline.evaluation import Scorer, evaluate
from operators.session_knn import (
    E_KIND,
    KINDS,
    NAMES,
    KNNConfig,
    Queries,
    SessionIndex,
    SessionKNN,
)

__all__ = ["KINDS", "NAMES", "KNNConfig", "KNNScorer", "SessionIndex", "Tuned", "describe", "search_space", "tune"]

TUNE_METRIC = "mrr@20"
VALID_KS = (10, 20)
E_NO_VALID = (
    "no validation cases to tune {kind} on; use data with a validation split (--val-share > 0, users with 3+ events)."
)


def queries(cases: Sequence[Case], sessions: SessionIndex) -> Queries:
    """Each case's history as a query at the case's time."""
    return Queries.of_histories([[ev.item_id for ev in c.history] for c in cases], case_times(cases), sessions.index)


class KNNScorer(Scorer):
    """SKNN, V-SKNN or STAN (``config.kind``) scoring evaluation cases (:class:`operators.session_knn.SessionKNN`)."""

    def __init__(self, sessions: SessionIndex, config: KNNConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.knn = SessionKNN(sessions, config)
        self.index = sessions.index
        self.name = NAMES[config.kind]

    def neighbours(self, cases: Sequence[Case]) -> dict[str, np.ndarray]:
        return self.knn.neighbours(queries(cases, self.sessions))

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        return self.knn.scores(queries(cases, self.sessions))


# ---- tuning on the validation split ---------------------------------------------------


@dataclass
class Tuned:
    """The chosen configuration, its validation metrics, and every configuration tried."""

    config: KNNConfig
    metrics: dict[str, float]
    cases: int
    seconds: float
    tried: list[tuple[KNNConfig, float]] = field(default_factory=list)


def search_space(kind: str, sessions: SessionIndex) -> list[tuple[str, list]]:
    """The grid of one method, axis by axis, each axis's first value the starting point.

    STAN's λ1 and λ3 are multiples of the mean training history length L (the paper's
    grid is L/8 … 2L plus a near-zero λ that keeps only the last item; here L/32 … 4L), λ2
    fractions of the training time span (for Diginetica's 5 months, span/256 … span/4 is
    about half a day to five weeks). Wherever a measurement chose a value on an edge of
    the grid, the grid got one more step there.
    """
    axes: list[tuple[str, list]] = [("k", [100, 50, 200, 25, 10]), ("sample_size", [500, 1000, 250])]
    if kind == "vsknn":
        axes += [("weighting", ["linear", "div", "quadratic", "log"]), ("score_weighting", ["div", "linear", "same"])]
    if kind == "stan":
        length = max(1.0, sessions.mean_events)
        span = max(sessions.span, 1e-9)
        lengths = [length, length / 32, length / 16, length / 8, length / 4, length / 2, 2 * length]
        axes += [
            ("lambda_spw", [*lengths, 0.0]),
            ("lambda_snh", [0.0, span / 256, span / 64, span / 16, span / 4]),
            ("lambda_inh", [*lengths, 4 * length, 0.0]),
        ]
    return axes


def tune(
    kind: str,
    split: Split,
    max_cases: int = 5_000,
    seed: int = 0,
    batch_size: int = 512,
    exclude_seen: bool = False,
    passes: int = 2,
    sessions: SessionIndex | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[KNNScorer, Tuned]:
    """Choose ``kind``'s hyper-parameters by validation MRR@20 on at most ``max_cases`` validation cases.

    A coordinate search: each axis of :func:`search_space` in turn, the others held at
    their best values so far, for up to ``passes`` rounds (fewer when a round changes
    nothing). Test cases are never looked at.
    """
    if kind not in KINDS:
        raise ValueError(E_KIND.format(kind=kind))
    if not split.valid:
        raise ValueError(E_NO_VALID.format(kind=kind))
    started = time.perf_counter()
    sessions = sessions or SessionIndex.from_split(split)
    cases: Sequence[Case] = split.valid
    if len(cases) > max_cases:
        pick = np.sort(np.random.default_rng(seed).choice(len(cases), max_cases, replace=False))
        cases = [split.valid[i] for i in pick]
    axes = search_space(kind, sessions)
    best = KNNConfig(kind, **{name: values[0] for name, values in axes})
    seen: dict[KNNConfig, dict[str, float]] = {}

    def score(cfg: KNNConfig) -> float:
        if cfg not in seen:
            report = evaluate(KNNScorer(sessions, cfg), cases, VALID_KS, batch_size, exclude_seen)
            seen[cfg] = report.metrics
            if log is not None:
                log(f"  {NAMES[kind]} {cfg.label(sessions.time_unit)}: valid MRR@20 {report.metrics[TUNE_METRIC]:.4f}")
        return seen[cfg][TUNE_METRIC]

    for _ in range(passes):
        before = best
        for name, values in axes:
            best = max((replace(best, **{name: v}) for v in values), key=lambda c: (score(c), c == best))
        if best == before:
            break
    tuned = Tuned(
        best, seen[best], len(cases), time.perf_counter() - started, [(c, m[TUNE_METRIC]) for c, m in seen.items()]
    )
    return KNNScorer(sessions, best), tuned


def describe(tuned: Tuned, time_unit: str = "s") -> str:
    """One line: the chosen values and how they were chosen."""
    m = tuned.metrics
    return (
        f"{NAMES[tuned.config.kind]}: chose {tuned.config.label(time_unit)} by validation MRR@20 "
        f"{m[TUNE_METRIC]:.4f} (Recall@20 {m['recall@20']:.4f}; {len(tuned.tried)} settings on "
        f"{tuned.cases:,} validation cases, {tuned.seconds:.0f}s)"
    )
