"""Session-kNN baselines: SKNN, V-SKNN and STAN over an inverted index item → training sessions.

The current session (a case's history) is compared with the training histories that
share an item with it; of those, the ``sample_size`` closest in time are candidates
(the most recent ones for a test case, which happens after all of training), the ``k``
most similar candidates are the neighbours, and an item's score is the sum of its
neighbours' similarities, weighted per method:

* **SKNN** (Jannach and Ludewig 2017): binary cosine ``|s ∩ n| / sqrt(|s| · |n|)`` over
  distinct items; ``score(i) = Σ sim(s, n) · 1[i ∈ n]``.
* **V-SKNN** (Ludewig and Jannach 2018): the current session is a real-valued vector,
  1 for its last item and decaying towards its first (``weighting``, linear by default:
  ``1 - 0.1 · (L - p)``), and ``sim(s, n)`` is its dot product with the binary vector of
  ``n``; each neighbour's contribution is multiplied by ``score_weighting(d)``, where
  ``d`` = 1 + how many events back the most recent item of ``s`` that ``n`` holds lies.
* **STAN** (Garg et al. 2019): the cosine of the current session weighted by
  ``w1 = exp((p - L) / λ1)`` against ``n``, times ``w2 = exp(-|t(s) - t(n)| / λ2)``; an
  item's contribution is multiplied by ``w3 = exp(-|q(i) - q(i*)| / λ3)``, with ``q`` the
  (last) position in ``n`` and ``i*`` the most recent item of ``s`` that ``n`` holds.
  (session-rec's implementation takes the last position in ``n`` of *any* shared item as
  ``q(i*)``; the two agree whenever ``n`` holds the shared items in the session's order.)
  A λ of 0 switches that weight off.

``p`` is an item's (last) position in the current session, 1..L with L its number of
events; items outside the training vocabulary keep their positions but match nothing.
Normalisations that are the same for every neighbour of one case change no ranking:
SKNN and STAN keep theirs (``|s|`` and the norm of the weighted session in the cosines);
V-SKNN's division of the dot product by the session's item count (in session-rec) is left
out. Items no neighbour holds score below every
neighbour item, ordered by training popularity (``-1 + pop / (max pop + 1)``), so they
do not all tie; :func:`operators.offline.evaluation.evaluate` then ranks them like any scorer's.

Neighbours are the ``k`` highest similarities, values equal to float32 precision counting
as ties, and ties go to the session nearer in time.

Time: each training history's :attr:`Split.train_times` (or its last event's ts) and
each case's :attr:`Case.time` (or its last event's ts). Candidates are the ``sample_size``
sessions with the smallest ``|t(s) - t(n)|`` (ties: nearer in time order): for a test
case that is "the most recent", as in the papers; a validation case of a random session
split sits inside the training period, and its nearest sessions in time play that role.

Everything runs per batch of cases in numpy (one sort for the overlaps, two lexsorts for
the sample and the top-k): each item's posting list is sorted by time, so only a window
of ``sample_size`` postings on either side of the case's time can hold a candidate.

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

from operators.item_index import ItemIndex
from operators.offline.datasets import Case, Split, segment_ranges
from operators.offline.evaluation import Scorer, evaluate

KINDS = ("sknn", "vsknn", "stan")
NAMES = {"sknn": "SKNN", "vsknn": "V-SKNN", "stan": "STAN"}
TUNE_METRIC = "mrr@20"
VALID_KS = (10, 20)
MAX_POSTINGS = 2_000_000
"""Postings one pass of :meth:`KNNScorer.neighbours` handles (about 100 MB of work arrays); more: halve the batch."""
E_KIND = "unknown kNN method {kind!r}; choose from sknn, vsknn, stan."
E_WEIGHTING = "unknown {what} {name!r}; choose from {choices}."
E_POSITIVE = "{name} must be at least 1 (got {value})."
E_NO_VALID = (
    "no validation cases to tune {kind} on; use data with a validation split (--val-share > 0, users with 3+ events)."
)


def position_weight(name: str, p: np.ndarray, length: np.ndarray) -> np.ndarray:
    """V-SKNN's weight of the current session's item at position ``p`` (1-based) of ``length``."""
    p = p.astype(np.float64)
    length = length.astype(np.float64)
    if name == "linear":
        return np.maximum(0.0, 1.0 - 0.1 * (length - p))
    if name == "div":
        return p / length
    if name == "quadratic":
        return (p / length) ** 2
    if name == "log":
        return 1.0 / np.log10(length - p + 1.7)
    if name == "same":
        return np.ones_like(p)
    raise ValueError(E_WEIGHTING.format(what="weighting", name=name, choices=", ".join(POSITION_WEIGHTS)))


def score_weight(name: str, d: np.ndarray) -> np.ndarray:
    """V-SKNN's factor for a neighbour whose latest shared item lies ``d`` events back (1 = the last event)."""
    d = d.astype(np.float64)
    if name == "div":
        return 1.0 / d
    if name == "linear":
        return np.maximum(0.0, 1.0 - 0.1 * d)
    if name == "quadratic":
        return 1.0 / (d * d)
    if name == "log":
        return 1.0 / np.log10(d + 1.7)
    if name == "same":
        return np.ones_like(d)
    raise ValueError(E_WEIGHTING.format(what="score weighting", name=name, choices=", ".join(SCORE_WEIGHTS)))


POSITION_WEIGHTS = ("linear", "div", "quadratic", "log", "same")
SCORE_WEIGHTS = ("div", "linear", "quadratic", "log", "same")


@dataclass(frozen=True)
class KNNConfig:
    """One kNN method and its hyper-parameters (λs of 0 switch STAN's weight off)."""

    kind: str = "sknn"
    k: int = 100
    """Neighbours whose items are scored."""
    sample_size: int = 500
    """Candidates: the sessions sharing an item with the case that are closest to it in time."""
    weighting: str = "linear"
    """V-SKNN: position weight of the current session's items."""
    score_weighting: str = "div"
    """V-SKNN: decay by how far back the most recent shared item lies."""
    lambda_spw: float = 0.0
    """STAN λ1: position decay of the current session's items, in events."""
    lambda_snh: float = 0.0
    """STAN λ2: recency decay of neighbour sessions, in the split's time unit."""
    lambda_inh: float = 0.0
    """STAN λ3: decay of a neighbour's items by their distance from the shared item, in events."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(E_KIND.format(kind=self.kind))
        for name in ("k", "sample_size"):
            if getattr(self, name) < 1:
                raise ValueError(E_POSITIVE.format(name=name, value=getattr(self, name)))
        position_weight(self.weighting, np.ones(1), np.ones(1))
        score_weight(self.score_weighting, np.ones(1))

    def params(self) -> dict[str, float | int | str]:
        """The hyper-parameters this method uses."""
        out: dict[str, float | int | str] = {"k": self.k, "sample_size": self.sample_size}
        if self.kind == "vsknn":
            out.update(weighting=self.weighting, score_weighting=self.score_weighting)
        if self.kind == "stan":
            out.update(lambda1=self.lambda_spw, lambda2=self.lambda_snh, lambda3=self.lambda_inh)
        return out

    def label(self, time_unit: str = "s") -> str:
        parts = [f"k={self.k}", f"sample={self.sample_size}"]
        if self.kind == "vsknn":
            parts += [f"weighting={self.weighting}", f"score={self.score_weighting}"]
        if self.kind == "stan":
            parts += [
                f"λ1={_num(self.lambda_spw)}",
                f"λ2={_num(self.lambda_snh)}" + (f" {time_unit}" if self.lambda_snh else ""),
                f"λ3={_num(self.lambda_inh)}",
            ]
        return ", ".join(parts)


def _num(x: float) -> str:
    if x == 0:
        return "off"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


class SessionIndex:
    """Training histories as flat arrays plus an inverted index item row → sessions, each sorted by time.

    Sessions are renumbered in time order (ties keep their split order), so a posting
    list sorted by session number is sorted by time.
    """

    def __init__(
        self, histories: Sequence[Sequence[str]], times: Sequence[float], index: ItemIndex, time_unit: str = "s"
    ) -> None:
        if len(times) != len(histories):
            raise ValueError(f"{len(times)} training times for {len(histories)} training histories; pass one each.")
        self.index = index
        self.time_unit = time_unit
        n_items = len(index.vocab)
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        self.times = np.asarray(times, dtype=np.float64)[order]
        items: list[int] = []
        positions: list[int] = []
        ptr = [0]
        counts = np.zeros(n_items, dtype=np.float64)
        events = 0
        for s in order:
            last: dict[int, int] = {}
            for p, item in enumerate(histories[s], 1):
                if index.is_known(item):
                    last[index.row(item)] = p
            rows = index.rows([x for x in histories[s] if index.is_known(x)])
            np.add.at(counts, rows, 1.0)
            events = max(events, len(histories[s]))
            items.extend(last.keys())
            positions.extend(last.values())
            ptr.append(len(items))
        self.sess_ptr = np.asarray(ptr, dtype=np.int64)
        self.sess_item = np.asarray(items, dtype=np.int64)
        self.sess_pos = np.asarray(positions, dtype=np.int64)
        self.sess_len = np.diff(self.sess_ptr)
        """Distinct items per session: ``|n|`` of the cosines."""
        self.n_sessions = len(order)
        self.max_events = max(1, events)
        self.mean_events = float(np.mean([len(h) for h in histories])) if histories else 1.0
        span = float(self.times[-1] - self.times[0]) if self.n_sessions else 0.0
        self.span = span
        sess_of = np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.sess_len)
        by_item = np.argsort(self.sess_item, kind="stable")  # item-major, sessions ascending within
        self.post_sess = sess_of[by_item]
        self.post_pos = self.sess_pos[by_item]
        self.item_ptr = np.concatenate([[0], np.cumsum(np.bincount(self.sess_item, minlength=n_items))]).astype(
            np.int64
        )
        self.post_key = self.sess_item[by_item] * (self.n_sessions + 1) + self.post_sess
        self.fallback = torch.from_numpy((-1.0 + counts / (counts.max(initial=0.0) + 1.0)).astype(np.float32))

    @classmethod
    def from_split(cls, split: Split, index: ItemIndex | None = None) -> SessionIndex:
        histories = [[ev.item_id for ev in seq] for seq in split.train]
        times = split.train_times or [float(seq[-1].ts) if seq else 0.0 for seq in split.train]
        return cls(histories, times, index or ItemIndex(split.vocab, 1), split.time_unit)


@dataclass
class _Batch:
    """The cases of one batch: per case, and per (case, distinct known item) pair."""

    length: np.ndarray  # events in the history (L)
    distinct: np.ndarray  # distinct items (|s|), known or not
    when: np.ndarray  # case time
    pair_case: np.ndarray
    pair_item: np.ndarray
    pair_pos: np.ndarray  # last position of the item in the history, 1-based


class KNNScorer(Scorer):
    """SKNN, V-SKNN or STAN (``config.kind``) over a :class:`SessionIndex`; see the module docstring."""

    def __init__(self, sessions: SessionIndex, config: KNNConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.index = sessions.index
        self.name = NAMES[config.kind]

    def _batch(self, cases: Sequence[Case]) -> _Batch:
        index = self.index
        length = np.zeros(len(cases), dtype=np.int64)
        distinct = np.zeros(len(cases), dtype=np.int64)
        when = np.zeros(len(cases), dtype=np.float64)
        pc: list[int] = []
        pi: list[int] = []
        pp: list[int] = []
        for c, case in enumerate(cases):
            history = case.history
            length[c] = len(history)
            when[c] = case.time if case.time is not None else (float(history[-1].ts) if history else 0.0)
            last = {ev.item_id: p for p, ev in enumerate(history, 1)}
            distinct[c] = len(last)
            for item, p in last.items():
                if index.is_known(item):
                    pc.append(c)
                    pi.append(index.row(item))
                    pp.append(p)
        as_int = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
        return _Batch(length, distinct, when, as_int(pc), as_int(pi), as_int(pp))

    def neighbours(self, cases: Sequence[Case]) -> dict[str, np.ndarray]:
        """The neighbours of every case: ``case``, ``session`` (time-ordered number), ``sim`` and the shared-item data.

        Sorted by case, then by similarity (highest first).
        """
        cfg, ix = self.config, self.sessions
        b = self._batch(cases)
        n, size = ix.n_sessions, cfg.sample_size
        empty = {k: np.zeros(0, dtype=np.int64) for k in ("case", "session", "latest")}
        if len(b.pair_case) == 0 or n == 0:
            return {**empty, "sim": np.zeros(0)}
        # 1. a window of postings around the case's time in every item's list
        before = np.searchsorted(ix.times, b.when, side="left")  # sessions strictly earlier than the case
        j = np.searchsorted(ix.post_key, b.pair_item * (n + 1) + before[b.pair_case])
        lo = np.maximum(ix.item_ptr[b.pair_item], j - size)
        hi = np.minimum(ix.item_ptr[b.pair_item + 1], j + size)
        if int((hi - lo).sum()) > MAX_POSTINGS and len(cases) > 1:  # long histories: halve the batch
            half = len(cases) // 2
            first, second = self.neighbours(cases[:half]), self.neighbours(cases[half:])
            second["case"] = second["case"] + half
            return {key: np.concatenate([first[key], second[key]]) for key in first}
        at = segment_ranges(lo, hi - lo)
        pair = np.repeat(np.arange(len(lo)), hi - lo)
        case = b.pair_case[pair]
        # 2. per (case, session): the summed weights of the shared items and the most recent one
        if cfg.kind == "sknn":
            w = np.ones(len(b.pair_case))
        elif cfg.kind == "vsknn":
            w = position_weight(cfg.weighting, b.pair_pos, b.length[b.pair_case])
        else:
            w = _exp_decay(b.length[b.pair_case] - b.pair_pos, cfg.lambda_spw)
        keys = case * n + ix.post_sess[at]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        uniq = sorted_keys[starts]
        overlap = np.add.reduceat(w[pair][order], starts)
        code = b.pair_pos[pair] * (ix.max_events + 1) + ix.post_pos[at]
        latest = np.maximum.reduceat(code[order], starts)
        cand_case, cand_sess = uniq // n, uniq % n
        # 3. the sample: the `size` candidates closest in time (ties: nearer in time order)
        dt = np.abs(b.when[cand_case] - ix.times[cand_sess])
        near = np.abs(cand_sess - before[cand_case] + 0.5)
        keep = _first_per_group(cand_case, size, near, dt)
        cand_case, cand_sess, overlap, latest, dt, near = (
            x[keep] for x in (cand_case, cand_sess, overlap, latest, dt, near)
        )
        # 4. similarity
        if cfg.kind == "sknn":
            sim = overlap / np.sqrt(b.distinct[cand_case] * ix.sess_len[cand_sess])
        elif cfg.kind == "vsknn":
            sim = overlap
        else:
            norm = np.sqrt(_squared_position_weights(cases, cfg.lambda_spw))
            sim = overlap / (norm[cand_case] * np.sqrt(ix.sess_len[cand_sess]))
            sim = sim * np.exp(-dt / cfg.lambda_snh) if cfg.lambda_snh > 0 else sim
        positive = sim > 0
        cand_case, cand_sess, sim, latest, near = (x[positive] for x in (cand_case, cand_sess, sim, latest, near))
        # 5. the k most similar; equal to float32 precision is a tie (sums of the same weights
        # in another order differ in the last bits), and ties go to the session nearer in time
        top = _first_per_group(cand_case, cfg.k, near, -sim.astype(np.float32))
        return {"case": cand_case[top], "session": cand_sess[top], "sim": sim[top], "latest": latest[top]}

    def scores(self, cases: Sequence[Case]) -> torch.Tensor:
        cfg, ix = self.config, self.sessions
        nb = self.neighbours(cases)
        out = ix.fallback.unsqueeze(0).repeat(len(cases), 1)
        if len(nb["case"]):
            lengths = ix.sess_len[nb["session"]]
            at = segment_ranges(ix.sess_ptr[nb["session"]], lengths)
            weight = nb["sim"]
            if cfg.kind == "vsknn":
                length = np.asarray([len(c.history) for c in cases], dtype=np.int64)[nb["case"]]
                back = length - nb["latest"] // (ix.max_events + 1) + 1
                weight = weight * score_weight(cfg.score_weighting, back)
            values = np.repeat(weight, lengths)
            if cfg.kind == "stan" and cfg.lambda_inh > 0:
                star = np.repeat(nb["latest"] % (ix.max_events + 1), lengths)
                values = values * np.exp(-np.abs(ix.sess_pos[at] - star) / cfg.lambda_inh)
            # sum per (case, item) in float64 over the touched entries only, then write them once
            keys = np.repeat(nb["case"], lengths) * self.n_items + ix.sess_item[at]
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            total = np.add.reduceat(values[order], starts)
            held = total > 0
            cells = torch.from_numpy(keys[starts][held])
            out.view(-1)[cells] = torch.from_numpy(total[held]).to(torch.float32)
        return out


def _exp_decay(distance: np.ndarray, lam: float) -> np.ndarray:
    return np.exp(-distance / lam) if lam > 0 else np.ones(len(distance))


def _squared_position_weights(cases: Sequence[Case], lam: float) -> np.ndarray:
    """STAN: ``Σ w1(i)²`` over every distinct item of each case's history, known or not."""
    out = np.zeros(len(cases))
    for c, case in enumerate(cases):
        last = {ev.item_id: p for p, ev in enumerate(case.history, 1)}
        d = len(case.history) - np.fromiter(last.values(), dtype=np.int64, count=len(last))
        out[c] = float(np.sum(_exp_decay(d, lam) ** 2))
    return out


def _first_per_group(group: np.ndarray, limit: int, *keys: np.ndarray) -> np.ndarray:
    """Indices of the ``limit`` smallest entries of every group, by ``keys`` (the last one first)."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((*keys, group))
    g = group[order]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.append(starts, len(g))))
    return order[rank < limit]


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
