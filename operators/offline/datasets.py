"""Training data: behaviour histories → next-item examples, packed as flat graph (or sequence) arrays.

Two protocols produce a :class:`Split`:

* **sessions** (the SR-GNN split): ``train_sessions.txt`` holds one session per line
  (space-separated item ids), ``test_prefixes.tsv`` one test case per line (prefix,
  TAB, next item). Every prefix of every training session is a training example.
* **leave-one-out** over user histories (already validated events, grouped per user
  by the caller): per user, in time order, the last event is the test target, the
  second-to-last the validation target, everything before is training history.

Prefix graphs are built with the same :meth:`graph_state.UserGraph.apply` the stream
uses and flattened exactly as :func:`operators.tensors.graphs_to_batch` flattens them,
once, into numpy arrays; a training batch is a vectorised slice of those arrays.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from graph_state import Behavior, GraphConfig, UserGraph
from operators.item_index import ItemIndex
from operators.session_knn import segment_ranges
from operators.tensors import GraphBatch, recency_buckets

SESSIONS_TRAIN = "train_sessions.txt"
SESSIONS_TEST = "test_prefixes.tsv"
SESSION_START_TS = 1_700_000_000.0
"""Sessions carry no clock: behaviour ``i`` of a session happens ``i`` seconds after this."""
E_NO_SESSIONS = (
    "{path} has no {name}; pass the directory holding train_sessions.txt (and test_prefixes.tsv) or the train file."
)
E_BAD_PREFIX = "{path}:{line}: expected 'item item …<TAB>next_item'; fix or remove the line."


@dataclass(frozen=True)
class Interaction:
    """A behaviour built by a dataset reader (satisfies :class:`graph_state.Behavior`)."""

    event_id: str
    item_id: str
    action: str = "view"
    ts: float = SESSION_START_TS
    weight: float | None = None


@dataclass(frozen=True)
class Case:
    """One evaluation case: a user's history (in order) and the item that came next."""

    user_id: str
    history: Sequence[Behavior]
    target: str
    time: float | None = None
    """When the case happens on its split's clock (:attr:`Split.train_times`); None = its last event's ts."""


@dataclass
class Split:
    """Training histories, validation and test cases, and the training vocabulary."""

    train: list[Sequence[Behavior]]
    valid: list[Case]
    test: list[Case]
    vocab: list[str]
    protocol: str
    fingerprint: str = ""
    info: dict[str, float | int | str] = field(default_factory=dict)
    train_times: list[float] = field(default_factory=list)
    """When each training history ended, for recency-aware baselines; empty = each one's last event ts."""
    time_unit: str = "s"
    """Unit of :attr:`train_times` and :attr:`Case.time`."""


# ---- the SR-GNN sessions format ------------------------------------------------


def session_paths(data: str) -> tuple[str, str | None]:
    """``(train file, test file or None)`` for a directory or a train file."""
    if os.path.isdir(data):
        train = os.path.join(data, SESSIONS_TRAIN)
        test = os.path.join(data, SESSIONS_TEST)
    else:
        train, test = data, os.path.join(os.path.dirname(data), SESSIONS_TEST)
    if not os.path.exists(train):
        raise FileNotFoundError(E_NO_SESSIONS.format(path=data, name=SESSIONS_TRAIN))
    return train, test if os.path.exists(test) else None


def read_sessions(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [items for line in f if (items := line.split())]


def read_prefixes(path: str) -> list[tuple[list[str], str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            prefix, sep, target = line.rstrip("\r\n").partition("\t")
            if not sep or not prefix.split() or not target.strip():
                raise ValueError(E_BAD_PREFIX.format(path=path, line=n))
            out.append((prefix.split(), target.strip()))
    return out


def session_events(session_id: str, items: Sequence[str]) -> list[Interaction]:
    """A session as behaviours one second apart (views, no weight)."""
    return [Interaction(f"{session_id}:{i}", item, "view", SESSION_START_TS + i) for i, item in enumerate(items)]


def sessions_split(data: str, val_share: float = 0.1, seed: int = 0) -> Split:
    """SR-GNN protocol: a random ``val_share`` of training sessions validates (all their prefixes).

    The files carry no clock, but SR-GNN's preprocessing writes the training sessions in
    date order and takes the test sessions from the days after them, so a session's line
    number is its time (:attr:`Split.train_times`, unit "sessions"): a validation case
    happens at its session's line, a test case after every training session.
    """
    train_path, test_path = session_paths(data)
    sessions = read_sessions(train_path)
    order = list(range(len(sessions)))
    random.Random(seed).shuffle(order)
    n_val = round(val_share * len(sessions))
    val_ids = set(order[:n_val])
    train: list[Sequence[Behavior]] = [session_events(f"s{i}", s) for i, s in enumerate(sessions) if i not in val_ids]
    train_times = [float(i) for i in range(len(sessions)) if i not in val_ids]
    vocab = list(dict.fromkeys(ev.item_id for seq in train for ev in seq))
    valid = [
        Case(f"s{i}", session_events(f"s{i}", sessions[i][:t]), sessions[i][t], float(i))
        for i in sorted(val_ids)
        for t in range(1, len(sessions[i]))
    ]
    test: list[Case] = []
    if test_path is not None:
        after = float(len(sessions))
        test = [
            Case(f"t{n}", session_events(f"t{n}", p), y, after) for n, (p, y) in enumerate(read_prefixes(test_path))
        ]
    files = [train_path] + ([test_path] if test_path else [])
    info: dict[str, float | int | str] = {"sessions": len(sessions), "val_sessions": n_val}
    fingerprint = fingerprint_files(files, f"sessions:{val_share}:{seed}")
    return Split(train, valid, test, vocab, "sessions", fingerprint, info, train_times, "sessions")


# ---- user histories: leave-one-out -------------------------------------------------


def leave_one_out(histories: Mapping[str, Sequence[Behavior]], fingerprint: str = "") -> Split:
    """Per user in time order: last event = test, second-to-last = validation, the rest trains.

    Users with fewer than three events only contribute training history.
    """
    train: list[Sequence[Behavior]] = []
    valid: list[Case] = []
    test: list[Case] = []
    for user, events in histories.items():
        ordered = sorted(events, key=lambda e: e.ts)  # stable: file order breaks ties
        if len(ordered) < 3:
            train.append(ordered)
            continue
        train.append(ordered[:-2])
        valid.append(Case(user, ordered[:-2], ordered[-2].item_id))
        test.append(Case(user, ordered[:-1], ordered[-1].item_id))
    vocab = list(dict.fromkeys(ev.item_id for seq in train for ev in seq))
    info: dict[str, float | int | str] = {"users": len(histories), "events": sum(len(h) for h in histories.values())}
    return Split(train, valid, test, vocab, "leave-one-out", fingerprint, info)


def fingerprint_files(paths: Iterable[str], salt: str = "") -> str:
    """A digest of the training data: file sizes plus their full content."""
    h = hashlib.sha256(salt.encode())
    for path in paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


# ---- packed prefix graphs ------------------------------------------------------------


@dataclass
class PackedGraphs:
    """Many user graphs as flat arrays; :meth:`batch` slices any subset into a ``GraphBatch``.

    Node and edge fields are exactly those :func:`graphs_to_batch` produces for the
    same graphs, with node ids local to their graph (offsets are added per batch).
    """

    item_rows: np.ndarray
    actions: np.ndarray
    log_counts: np.ndarray
    recency: np.ndarray
    node_ptr: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    edge_ptr: np.ndarray
    last: np.ndarray
    targets: np.ndarray
    """Row of the next item in the vocabulary (-1 when it is outside it)."""

    def __len__(self) -> int:
        return int(self.last.shape[0])

    def batch(self, sel: np.ndarray) -> GraphBatch:
        sel = np.asarray(sel, dtype=np.int64)
        n_nodes = self.node_ptr[sel + 1] - self.node_ptr[sel]
        n_edges = self.edge_ptr[sel + 1] - self.edge_ptr[sel]
        offsets = np.concatenate([[0], np.cumsum(n_nodes)])
        nodes = segment_ranges(self.node_ptr[sel], n_nodes)
        edges = segment_ranges(self.edge_ptr[sel], n_edges)
        shift = np.repeat(offsets[:-1], n_edges)
        edge_index = np.stack([self.src[edges] + shift, self.dst[edges] + shift])
        return GraphBatch(
            item_rows=torch.from_numpy(self.item_rows[nodes]),
            actions=torch.from_numpy(self.actions[nodes]),
            log_counts=torch.from_numpy(self.log_counts[nodes]),
            recency=torch.from_numpy(self.recency[nodes]),
            edge_index=torch.from_numpy(edge_index),
            edge_weight=torch.from_numpy(self.weight[edges]),
            batch=torch.from_numpy(np.repeat(np.arange(len(sel), dtype=np.int64), n_nodes)),
            last_node=torch.from_numpy(self.last[sel] + offsets[:-1]),
            ptr=torch.from_numpy(offsets.astype(np.int64)),
        )


@dataclass
class PackedSequences:
    """The last ``max_len`` item rows of each history, for sequence baselines (GRU)."""

    rows: np.ndarray
    ptr: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batch(self, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(padded rows [B, T] right-padded with 0, lengths [B])``."""
        sel = np.asarray(sel, dtype=np.int64)
        lengths = self.ptr[sel + 1] - self.ptr[sel]
        width = max(1, int(lengths.max()) if len(sel) else 1)
        padded = np.zeros((len(sel), width), dtype=np.int64)
        cols = segment_ranges(np.zeros(len(sel), dtype=np.int64), lengths)
        rows_of = np.repeat(np.arange(len(sel)), lengths)
        padded[rows_of, cols] = self.rows[segment_ranges(self.ptr[sel], lengths)]
        return torch.from_numpy(padded), torch.from_numpy(lengths)


class _GraphPacker:
    """Gathers graphs the way :func:`graphs_to_batch` does; arithmetic happens once in :meth:`done`."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index
        self.rows: list[int] = []
        self.actions: list[int] = []
        self.counts: list[int] = []
        self.ago: list[int] = []
        self.node_ptr = [0]
        self.src: list[int] = []
        self.dst: list[int] = []
        self.weight: list[float] = []
        self.edge_ptr = [0]
        self.last: list[int] = []
        self.targets: list[int] = []

    def add(self, g: UserGraph, target: int) -> None:
        self.rows.extend(self.index.rows(g.item_ids))
        self.actions.extend(g.last_action.tolist())
        self.counts.extend(g.counts.tolist())
        version = g.state_version
        self.ago.extend((version - g.last_seq).tolist())
        self.src.extend(g.edge_src.tolist())
        self.dst.extend(g.edge_dst.tolist())
        self.weight.extend(g.edge_weight.tolist())
        self.node_ptr.append(len(self.rows))
        self.edge_ptr.append(len(self.src))
        self.last.append(g.last_slot)
        self.targets.append(target)

    def done(self) -> PackedGraphs:
        return PackedGraphs(
            item_rows=np.asarray(self.rows, dtype=np.int64),
            actions=np.asarray(self.actions, dtype=np.int64),
            log_counts=np.log1p(np.asarray(self.counts, dtype=np.float32)),
            recency=recency_buckets(np.asarray(self.ago, dtype=np.int64)),
            node_ptr=np.asarray(self.node_ptr, dtype=np.int64),
            src=np.asarray(self.src, dtype=np.int64),
            dst=np.asarray(self.dst, dtype=np.int64),
            weight=np.asarray(self.weight, dtype=np.float32),
            edge_ptr=np.asarray(self.edge_ptr, dtype=np.int64),
            last=np.asarray(self.last, dtype=np.int64),
            targets=np.asarray(self.targets, dtype=np.int64),
        )


def target_row(index: ItemIndex, item_id: str) -> int:
    return index.row(item_id) if index.is_known(item_id) else -1


def pack_prefix_graphs(
    histories: Iterable[Sequence[Behavior]], config: GraphConfig, index: ItemIndex, skip_unknown: bool = True
) -> PackedGraphs:
    """One graph per prefix of every history, labelled with the item that followed it."""
    packer = _GraphPacker(index)
    for events in histories:
        g = UserGraph(config)
        for t in range(len(events) - 1):
            g.apply(events[t])
            target = target_row(index, events[t + 1].item_id)
            if (target < 0 and skip_unknown) or g.n_nodes == 0:
                continue
            packer.add(g, target)
    return packer.done()


def case_times(cases: Sequence[Case]) -> list[float]:
    """When each case happens: :attr:`Case.time`, or its last event's ts."""
    return [c.time if c.time is not None else (float(c.history[-1].ts) if c.history else 0.0) for c in cases]


def case_graph(case: Case, config: GraphConfig) -> UserGraph:
    """The user graph a case's history builds: the stream's own ``apply``, event by event."""
    g = UserGraph(config)
    for ev in case.history:
        g.apply(ev)
    return g


def pack_case_graphs(cases: Iterable[Case], config: GraphConfig, index: ItemIndex) -> PackedGraphs:
    packer = _GraphPacker(index)
    for case in cases:
        packer.add(case_graph(case, config), target_row(index, case.target))
    return packer.done()


def pack_prefix_sequences(
    histories: Iterable[Sequence[Behavior]], index: ItemIndex, max_len: int, skip_unknown: bool = True
) -> PackedSequences:
    rows: list[int] = []
    ptr = [0]
    targets: list[int] = []
    for events in histories:
        seq = index.rows([ev.item_id for ev in events])
        for t in range(len(events) - 1):
            target = target_row(index, events[t + 1].item_id)
            if target < 0 and skip_unknown:
                continue
            rows.extend(seq[max(0, t + 1 - max_len) : t + 1])
            ptr.append(len(rows))
            targets.append(target)
    return PackedSequences(np.asarray(rows, np.int64), np.asarray(ptr, np.int64), np.asarray(targets, np.int64))


def pack_case_sequences(cases: Iterable[Case], index: ItemIndex, max_len: int) -> PackedSequences:
    rows: list[int] = []
    ptr = [0]
    targets: list[int] = []
    for case in cases:
        rows.extend(index.rows([ev.item_id for ev in case.history][-max_len:]))
        ptr.append(len(rows))
        targets.append(target_row(index, case.target))
    return PackedSequences(np.asarray(rows, np.int64), np.asarray(ptr, np.int64), np.asarray(targets, np.int64))
