"""Session-kNN: SKNN, V-SKNN and STAN over an inverted index item → training sessions, and STAN mixed into ranking.

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
do not all tie; evaluation then ranks them like any scorer's.

Neighbours are the ``k`` highest similarities, values equal to float32 precision counting
as ties, and ties go to the session nearer in time.

Time: each training history's time (:attr:`Split.train_times`, or its last event's ts) and
each query's time (an evaluation case's :attr:`Case.time`, or its last event's ts; ``inf`` for a
served user graph: after all of training). Candidates are the ``sample_size``
sessions with the smallest ``|t(s) - t(n)|`` (ties: nearer in time order): for a test
case that is "the most recent", as in the papers; a validation case of a random session
split sits inside the training period, and its nearest sessions in time play that role.

Everything runs per batch of cases in numpy (one sort for the overlaps, two lexsorts for
the sample and the top-k): each item's posting list is sorted by time, so only a window
of ``sample_size`` postings on either side of the case's time can hold a candidate.

>>> index = ItemIndex(["a", "b", "c", "d"], 1)
>>> sessions = SessionIndex([list("ab"), list("abc"), list("bd")], [0.0, 1.0, 2.0], index)
>>> knn = SessionKNN(sessions, KNNConfig("sknn", k=2))
>>> [round(x, 3) for x in knn.scores(Queries.of_histories([["a"]], [3.0], index))[0].tolist()]
[1.284, 1.284, 0.577, -0.75]

(neighbours "ab" with 1/√2 and "abc" with 1/√3; "d" is in none: -1 + 1/(3 + 1) by popularity)

:class:`KNNMix` is what serving uses: a checkpoint made by ``ripple mix`` carries a STAN (or
SKNN, V-SKNN) index of its training sessions, its tuned configuration and a weight ``w``, and
:class:`operators.recommend.ItemRanker` ranks by ``user · item + w · knn(item) / max knn`` with
the kNN query built from the user's graph (its items at their last positions, ``L`` its event
count). The tuning is offline: :mod:`operators.offline.knn_mix`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from graph_state import UserGraph
from operators.item_index import ItemIndex

KINDS = ("sknn", "vsknn", "stan")
NAMES = {"sknn": "SKNN", "vsknn": "V-SKNN", "stan": "STAN"}
MAX_POSTINGS = 2_000_000
"""Postings one pass of :meth:`SessionKNN.neighbours` handles (about 100 MB of work arrays); more: halve the batch."""
E_KIND = "unknown kNN method {kind!r}; choose from sknn, vsknn, stan."
E_WEIGHTING = "unknown {what} {name!r}; choose from {choices}."
E_POSITIVE = "{name} must be at least 1 (got {value})."
E_INDEX_SHAPE = (
    "a session index that does not fit its vocabulary ({items} items, {counts} counts, {sessions} sessions): "
    "the checkpoint is damaged; make the mix again with `ripple mix`."
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


def segment_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every pair, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    base = np.repeat(starts - (ends - lengths), lengths)
    return base + np.arange(total, dtype=np.int64)


class SessionIndex:
    """Training histories as flat arrays plus an inverted index item row → sessions, each sorted by time.

    Sessions are renumbered in time order (ties keep their given order), so a posting list
    sorted by session number is sorted by time. Per session only its distinct vocabulary
    items are kept, each at its last position (1-based, counted over all its events).
    """

    def __init__(
        self, histories: Sequence[Sequence[str]], times: Sequence[float], index: ItemIndex, time_unit: str = "s"
    ) -> None:
        if len(times) != len(histories):
            raise ValueError(f"{len(times)} training times for {len(histories)} training histories; pass one each.")
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        items: list[int] = []
        positions: list[int] = []
        ptr = [0]
        counts = np.zeros(len(index.vocab), dtype=np.float64)
        for s in order:
            last: dict[int, int] = {}
            for p, item in enumerate(histories[s], 1):
                if index.is_known(item):
                    last[index.row(item)] = p
            np.add.at(counts, index.rows([x for x in histories[s] if index.is_known(x)]), 1.0)
            items.extend(last.keys())
            positions.extend(last.values())
            ptr.append(len(items))
        mean_events = float(np.mean([len(h) for h in histories])) if histories else 1.0
        self._build(
            index,
            np.asarray(times, dtype=np.float64)[order],
            np.asarray(ptr, dtype=np.int64),
            np.asarray(items, dtype=np.int64),
            np.asarray(positions, dtype=np.int64),
            counts,
            mean_events,
            time_unit,
        )

    def _build(
        self,
        index: ItemIndex,
        times: np.ndarray,
        sess_ptr: np.ndarray,
        sess_item: np.ndarray,
        sess_pos: np.ndarray,
        counts: np.ndarray,
        mean_events: float,
        time_unit: str,
    ) -> None:
        n_items = len(index.vocab)
        if len(counts) != n_items or len(sess_ptr) != len(times) + 1 or int(sess_item.max(initial=-1)) >= n_items:
            raise ValueError(E_INDEX_SHAPE.format(items=n_items, counts=len(counts), sessions=len(times)))
        self.index, self.time_unit = index, time_unit
        self.times, self.sess_ptr, self.sess_item, self.sess_pos, self.counts = (
            times,
            sess_ptr,
            sess_item,
            sess_pos,
            counts,
        )
        self.sess_len = np.diff(sess_ptr)
        """Distinct items per session: ``|n|`` of the cosines."""
        self.n_sessions = len(times)
        self.max_events = max(1, int(sess_pos.max(initial=0)))
        self.mean_events = mean_events
        self.span = float(times[-1] - times[0]) if self.n_sessions else 0.0
        sess_of = np.repeat(np.arange(self.n_sessions, dtype=np.int64), self.sess_len)
        by_item = np.argsort(sess_item, kind="stable")  # item-major, sessions ascending within
        self.post_sess = sess_of[by_item]
        self.post_pos = sess_pos[by_item]
        self.item_ptr = np.concatenate([[0], np.cumsum(np.bincount(sess_item, minlength=n_items))]).astype(np.int64)
        self.post_key = sess_item[by_item] * (self.n_sessions + 1) + self.post_sess
        self.fallback = torch.from_numpy((-1.0 + counts / (counts.max(initial=0.0) + 1.0)).astype(np.float32))

    @classmethod
    def from_split(cls, split: Any, index: ItemIndex | None = None) -> SessionIndex:
        """The training histories of an :class:`operators.offline.datasets.Split` (its clock, or last event ts)."""
        histories = [[ev.item_id for ev in seq] for seq in split.train]
        times = split.train_times or [float(seq[-1].ts) if seq else 0.0 for seq in split.train]
        return cls(histories, times, index or ItemIndex(split.vocab, 1), split.time_unit)

    def arrays(self) -> dict[str, Any]:
        """What :meth:`from_arrays` needs, as tensors and plain values (a checkpoint stores it)."""
        return {
            "times": torch.from_numpy(self.times.copy()),
            "sess_ptr": torch.from_numpy(self.sess_ptr.copy()),
            "sess_item": torch.from_numpy(self.sess_item.astype(np.int32)),
            "sess_pos": torch.from_numpy(self.sess_pos.astype(np.int32)),
            "counts": torch.from_numpy(self.counts.astype(np.int64)),
            "mean_events": self.mean_events,
            "time_unit": self.time_unit,
        }

    @classmethod
    def from_arrays(cls, state: Mapping[str, Any], index: ItemIndex) -> SessionIndex:
        """The index :meth:`arrays` describes, over ``index`` (the same vocabulary)."""
        out = cls.__new__(cls)
        as_np = lambda name, dtype: np.asarray(state[name].numpy(), dtype=dtype)  # noqa: E731
        out._build(
            index,
            as_np("times", np.float64),
            as_np("sess_ptr", np.int64),
            as_np("sess_item", np.int64),
            as_np("sess_pos", np.int64),
            as_np("counts", np.float64),
            float(state["mean_events"]),
            str(state["time_unit"]),
        )
        return out


@dataclass
class Queries:
    """Current sessions to find neighbours for: per query its event count and time, per distinct item its position."""

    length: np.ndarray
    """Events of each query (``L``)."""
    when: np.ndarray
    """Each query's time on the index's clock; ``inf`` = after all of training (the most recent sessions)."""
    item_case: np.ndarray
    """Every distinct item of every query, known or not: its query,"""
    item_pos: np.ndarray
    """its last position in the query (1-based),"""
    item_row: np.ndarray
    """and its vocabulary row (-1 outside the vocabulary: it keeps its position but matches nothing)."""

    @property
    def n(self) -> int:
        return len(self.length)

    @classmethod
    def of_histories(cls, histories: Sequence[Sequence[str]], when: Sequence[float], index: ItemIndex) -> Queries:
        """Queries from item sequences (oldest first) and their times."""
        cases: list[int] = []
        positions: list[int] = []
        rows: list[int] = []
        for c, items in enumerate(histories):
            last = {item: p for p, item in enumerate(items, 1)}
            cases += [c] * len(last)
            positions += last.values()
            rows += [index.row(item) if index.is_known(item) else -1 for item in last]
        return cls(
            np.asarray([len(h) for h in histories], dtype=np.int64),
            np.asarray(when, dtype=np.float64),
            np.asarray(cases, dtype=np.int64),
            np.asarray(positions, dtype=np.int64),
            np.asarray(rows, dtype=np.int64),
        )

    @classmethod
    def of_graphs(cls, graphs: Sequence[UserGraph], index: ItemIndex, when: Sequence[float] | None = None) -> Queries:
        """Queries from user graphs: ``L`` is the graph's event count, an item's position its ``last_seq``.

        A graph applied from a history equals :meth:`of_histories` of that history while the
        history's distinct items fit the graph's window (older ones are evicted). ``when``
        defaults to ``inf``: a served user is after all of training.
        """
        cases = np.repeat(np.arange(len(graphs), dtype=np.int64), [g.n_nodes for g in graphs])
        rows = [index.row(item) if index.is_known(item) else -1 for g in graphs for item in g.item_ids]
        return cls(
            np.asarray([g.state_version for g in graphs], dtype=np.int64),
            np.full(len(graphs), np.inf) if when is None else np.asarray(when, dtype=np.float64),
            cases,
            np.concatenate([g.last_seq for g in graphs]).astype(np.int64) if graphs else np.zeros(0, np.int64),
            np.asarray(rows, dtype=np.int64),
        )

    def take(self, lo: int, hi: int) -> Queries:
        """Queries ``lo .. hi - 1``, renumbered from 0."""
        keep = (self.item_case >= lo) & (self.item_case < hi)
        return Queries(
            self.length[lo:hi],
            self.when[lo:hi],
            self.item_case[keep] - lo,
            self.item_pos[keep],
            self.item_row[keep],
        )


class SessionKNN:
    """SKNN, V-SKNN or STAN (``config.kind``) over a :class:`SessionIndex`; see the module docstring."""

    def __init__(self, sessions: SessionIndex, config: KNNConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.index = sessions.index

    @property
    def n_items(self) -> int:
        return len(self.index.vocab)

    def neighbours(self, q: Queries) -> dict[str, np.ndarray]:
        """The neighbours of every query: ``case``, ``session`` (time-ordered number), ``sim`` and the shared-item data.

        Sorted by query, then by similarity (highest first).
        """
        cfg, ix = self.config, self.sessions
        known = q.item_row >= 0
        pair_case, pair_item, pair_pos = q.item_case[known], q.item_row[known], q.item_pos[known]
        n, size = ix.n_sessions, cfg.sample_size
        empty = {k: np.zeros(0, dtype=np.int64) for k in ("case", "session", "latest")}
        if len(pair_case) == 0 or n == 0:
            return {**empty, "sim": np.zeros(0)}
        # 1. a window of postings around the query's time in every item's list
        before = np.searchsorted(ix.times, q.when, side="left")  # sessions strictly earlier than the query
        j = np.searchsorted(ix.post_key, pair_item * (n + 1) + before[pair_case])
        lo = np.maximum(ix.item_ptr[pair_item], j - size)
        hi = np.minimum(ix.item_ptr[pair_item + 1], j + size)
        if int((hi - lo).sum()) > MAX_POSTINGS and q.n > 1:  # long histories: halve the batch
            half = q.n // 2
            first, second = self.neighbours(q.take(0, half)), self.neighbours(q.take(half, q.n))
            second["case"] = second["case"] + half
            return {key: np.concatenate([first[key], second[key]]) for key in first}
        at = segment_ranges(lo, hi - lo)
        if len(at) == 0:  # no training session holds any of the queries' items
            return {**empty, "sim": np.zeros(0)}
        pair = np.repeat(np.arange(len(lo)), hi - lo)
        case = pair_case[pair]
        # 2. per (query, session): the summed weights of the shared items and the most recent one
        if cfg.kind == "sknn":
            w = np.ones(len(pair_case))
        elif cfg.kind == "vsknn":
            w = position_weight(cfg.weighting, pair_pos, q.length[pair_case])
        else:
            w = _exp_decay(q.length[pair_case] - pair_pos, cfg.lambda_spw)
        keys = case * n + ix.post_sess[at]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        uniq = sorted_keys[starts]
        overlap = np.add.reduceat(w[pair][order], starts)
        code = pair_pos[pair] * (ix.max_events + 1) + ix.post_pos[at]
        latest = np.maximum.reduceat(code[order], starts)
        cand_case, cand_sess = uniq // n, uniq % n
        # 3. the sample: the `size` candidates closest in time (ties: nearer in time order); "after all of
        # training" is as far from each session as the newest one is
        when = np.where(np.isinf(q.when), ix.times[-1], q.when)
        dt = np.abs(when[cand_case] - ix.times[cand_sess])
        near = np.abs(cand_sess - before[cand_case] + 0.5)
        keep = _first_per_group(cand_case, size, near, dt)
        cand_case, cand_sess, overlap, latest, dt, near = (
            x[keep] for x in (cand_case, cand_sess, overlap, latest, dt, near)
        )
        # 4. similarity
        if cfg.kind == "sknn":
            distinct = np.bincount(q.item_case, minlength=q.n)
            sim = overlap / np.sqrt(distinct[cand_case] * ix.sess_len[cand_sess])
        elif cfg.kind == "vsknn":
            sim = overlap
        else:
            w1 = _exp_decay(q.length[q.item_case] - q.item_pos, cfg.lambda_spw)
            norm = np.sqrt(np.bincount(q.item_case, weights=w1 * w1, minlength=q.n))
            sim = overlap / (norm[cand_case] * np.sqrt(ix.sess_len[cand_sess]))
            sim = sim * np.exp(-dt / cfg.lambda_snh) if cfg.lambda_snh > 0 else sim
        positive = sim > 0
        cand_case, cand_sess, sim, latest, near = (x[positive] for x in (cand_case, cand_sess, sim, latest, near))
        # 5. the k most similar; equal to float32 precision is a tie (sums of the same weights
        # in another order differ in the last bits), and ties go to the session nearer in time
        top = _first_per_group(cand_case, cfg.k, near, -sim.astype(np.float32))
        return {"case": cand_case[top], "session": cand_sess[top], "sim": sim[top], "latest": latest[top]}

    def scores(self, q: Queries) -> torch.Tensor:
        """``[queries, n_items]`` float32: each item's summed neighbour weight, or its popularity fallback."""
        cfg, ix = self.config, self.sessions
        nb = self.neighbours(q)
        out = ix.fallback.unsqueeze(0).repeat(q.n, 1)
        if len(nb["case"]):
            lengths = ix.sess_len[nb["session"]]
            at = segment_ranges(ix.sess_ptr[nb["session"]], lengths)
            weight = nb["sim"]
            if cfg.kind == "vsknn":
                back = q.length[nb["case"]] - nb["latest"] // (ix.max_events + 1) + 1
                weight = weight * score_weight(cfg.score_weighting, back)
            values = np.repeat(weight, lengths)
            if cfg.kind == "stan" and cfg.lambda_inh > 0:
                star = np.repeat(nb["latest"] % (ix.max_events + 1), lengths)
                values = values * np.exp(-np.abs(ix.sess_pos[at] - star) / cfg.lambda_inh)
            # sum per (query, item) in float64 over the touched entries only, then write them once
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


def _first_per_group(group: np.ndarray, limit: int, *keys: np.ndarray) -> np.ndarray:
    """Indices of the ``limit`` smallest entries of every group, by ``keys`` (the last one first)."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((*keys, group))
    g = group[order]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.append(starts, len(g))))
    return order[rank < limit]


def best_scaled(scores: torch.Tensor) -> torch.Tensor:
    """Each row divided by its best score, so its top item scores 1; a row with no positive score (no
    neighbour held anything) is all 0.

    >>> best_scaled(torch.tensor([[2.0, 1.0, -0.5], [-0.5, -0.9, -0.7]])).tolist()
    [[1.0, 0.5, -0.25], [0.0, 0.0, 0.0]]
    """
    best = scores.max(dim=1, keepdim=True).values
    return torch.where(best > 0, scores / best.clamp(min=1e-12), torch.zeros_like(scores))


@dataclass
class KNNMix:
    """A session-kNN scorer and the weight its best-scaled scores get beside the user · item score."""

    knn: SessionKNN
    weight: float

    def __post_init__(self) -> None:
        if not (self.weight > 0 and np.isfinite(self.weight)):
            raise ValueError(f"the kNN weight of a mix must be a positive number (got {self.weight!r}).")

    @property
    def label(self) -> str:
        return f"{NAMES[self.knn.config.kind]} w={self.weight:g}"

    def extra(self, graphs: Sequence[UserGraph], when: Sequence[float] | None = None) -> torch.Tensor:
        """``[len(graphs), n_items]``: ``weight`` times each graph's best-scaled kNN scores."""
        q = Queries.of_graphs(graphs, self.knn.index, when)
        return self.weight * best_scaled(self.knn.scores(q))

    def state(self) -> dict[str, Any]:
        """The mix as tensors and plain values (a checkpoint stores it; :meth:`from_state` reads it)."""
        return {"config": asdict(self.knn.config), "weight": float(self.weight), **self.knn.sessions.arrays()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], index: ItemIndex) -> KNNMix:
        knn = SessionKNN(SessionIndex.from_arrays(state, index), KNNConfig(**state["config"]))
        return cls(knn, float(state["weight"]))

    def digest(self) -> bytes:
        """Bytes that change with anything that changes a score (for the model version)."""
        s = self.knn.sessions
        parts = [repr(sorted(asdict(self.knn.config).items())).encode(), repr(float(self.weight)).encode()]
        parts += [a.tobytes() for a in (s.times, s.sess_ptr, s.sess_item, s.sess_pos, s.counts)]
        return b"|".join(parts)
