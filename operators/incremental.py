"""Incremental L-hop recompute: only nodes whose layer outputs can change are recomputed.

Each user graph carries its per-node cache ``[L + 1, n, d]`` (``UserGraph.cache``): the layer
outputs ``H^1..H^L`` and each node's readout term ``(att_node(H^L) + recency_emb(bucket)) / 2``
(:meth:`GraphEncoder.readout_terms`), the part of its attention input that its own state and
recency decide. When a micro-batch changes a set of slots ``C`` (new or updated nodes and both
endpoints of every changed edge), the nodes whose layer-``l`` output can differ are

    A_1 = C + N(C),    A_l = A_(l-1) + N(A_(l-1))      (+ = set union)

with ``N`` the undirected neighbourhood: a node's GCN output depends on its own
and its neighbours' inputs, the weights of its edges and the degrees of itself
and its neighbours, and a degree changes only at an endpoint of a changed edge.

The engine works on the whole micro-batch at once (the users' graphs concatenated): it grows
the affected sets over the batch's edges, builds every message into ``A_L`` as one sparse
matrix over ``U`` (``A_L`` and its neighbours; degrees from the full graphs), and at every layer
multiplies it by the previous layer's states on ``U`` and transforms the sums — the recompute of
``A_L`` at each layer, with the cached states of the rest of ``U``. Readout terms are refreshed
for ``A_L`` and for the few nodes whose log2 recency bucket moved; the readout then reads every
graph's cache where it lies (one add, one ``tanh`` and two matrix-vector products per graph).
Users without a valid cache, smaller than ``IncrementalPolicy.min_nodes`` (or than
``batched_min_nodes`` when too few of that size share the batch), or whose ``A_L`` covers most of
the graph take the batched full forward instead (measured rules, see docs/benchmarks.md).

Models with similarity edges (``EncoderConfig.similarity_k > 0``) always take the full
forward: one new or evicted item can change the k nearest neighbours of every node of
the graph, so the affected set is the whole graph anyway, and recomputing it from
scratch is exact by construction. Side features and a global view change only node inputs,
which are a function of the item alone, so they keep the incremental path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np
import torch
from torch.nn import functional as F

from graph_state import Gathered, UserDelta, UserGraph
from graph_state.rows import put_rows, take_rows
from graph_state.user_graph import COUNTS, LAST_ACTION, LAST_SEQ
from operators.checkpoint import Checkpoint
from operators.encoder import GraphEncoder, GraphLayer, sparse_csr, stable_order
from operators.tensors import GraphBatch, columns_to_batch, gather_columns, recency_buckets, recency_moved

if TYPE_CHECKING:
    from operators.forward_process import Answer, ForwardProcess, Pending

CACHE_LAYOUT = 3
"""1: ``[L, N, d]`` layer outputs; 2: ``[L + 1, N, d]``, the last row block ``att_node(H^L)``;
3: the last row block the readout terms (:meth:`GraphEncoder.readout_terms`, recency included)."""


@dataclass(frozen=True)
class IncrementalPolicy:
    enabled: bool = True
    full_share: float = 0.5
    """Recompute a user fully when ``|A_L|`` exceeds this share of its nodes."""
    min_nodes: int = 64
    """Graphs at least this large are recomputed incrementally whenever their cache allows."""
    batched_min_nodes: int = 32
    """Graphs from this size up to ``min_nodes`` are recomputed incrementally only when at least
    ``batched_min_graphs`` of them share the micro-batch. The incremental path costs a fixed ~0.6 ms
    a batch and saves ~17 µs a 50-node graph: 8 such graphs a batch were 1.7x slower than the full
    forward (``bench/history_length.py``), a full ml-100k batch of ~180 was 25 % faster (the file
    runner, ``bench/throughput.py``); graphs under 32 nodes were slower at every batch size."""
    batched_min_graphs: int = 32


def forward_with_caches(enc: GraphEncoder, b: GraphBatch, keep: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The serving forward of a batch (``enc(b)``'s user vectors), and the layer cache
    ``[L + 1, n, d]`` of each graph in ``keep``. The one definition the engine and the forward
    process both run, so their vectors are the same bits."""
    h = enc.node_inputs(b)
    sim = enc.similarity_edges(b)
    plan = enc.gcn_plan(b)
    states = []
    for layer in enc.layers:
        h = layer(h, b.edge_index, b.edge_weight, sim, plan)
        states.append(h)
    projected = F.linear(h, enc.att_node.weight)
    user, _ = enc.readout_projected(h, projected, b)
    caches: list[np.ndarray] = []
    if keep:
        terms = enc.readout_terms(h, b.recency, projected)
        stacked = torch.stack([*states, terms]).numpy()  # [L + 1, N, d]
        ptr = b.ptr.tolist()
        caches = [stacked[:, ptr[i] : ptr[i + 1]].copy() for i in keep]
    return user.numpy(), caches


class _Remote:
    """A full forward in the forward process: its answer, and the graphs to keep layer caches for,
    with the versions they had when it was handed over (the caches are of those versions)."""

    def __init__(self, engine: IncrementalEncoder, pending: Pending, kept: list[tuple[UserGraph, int]]) -> None:
        self.engine, self.pending, self.kept = engine, pending, kept
        self.kept_ids = {id(graph) for graph, _ in kept}
        self.answer: Answer | None = None

    def result(self) -> Answer:
        if self.answer is None:
            answer = self.pending.result()
            for (graph, version), layers in zip(self.kept, answer.caches, strict=True):
                self.engine._store(graph, layers, version)
            if self in self.engine._in_flight:
                self.engine._in_flight.remove(self)
            self.answer = answer
        return self.answer


class Deferred:
    """A batch's vectors, which may still be computing in the forward process (:meth:`result`)."""

    def __init__(self, out: np.ndarray, remote: _Remote | None) -> None:
        self._out: np.ndarray | None = out
        self._remote: _Remote | None = remote
        self.posted: object = None
        """What the forward process's ``post`` made of the vectors (after :meth:`result`; ``None``: nothing)."""

    def result(self) -> np.ndarray | None:
        """The vectors; ``None`` when the forward process posted them (:attr:`posted`, see ``Answer``)."""
        if self._remote is not None:
            answer = self._remote.result()
            self._out, self.posted = answer.vectors, answer.posted
            self._remote = None
        return self._out


def cache_key(checkpoint: Checkpoint, state_version: int) -> str:
    return f"{_key_prefix(checkpoint)}{state_version}"


def _key_prefix(checkpoint: Checkpoint) -> str:
    cfg = checkpoint.config
    return f"{checkpoint.model_version}:{cfg.layers}x{cfg.dim}:L{CACHE_LAYOUT}@"


def _grow(mask: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``mask`` plus every node one undirected edge away from it."""
    out = mask.copy()
    out[dst[mask[src]]] = True
    out[src[mask[dst]]] = True
    return out


def _affected(changed: np.ndarray, n_nodes: int, src: np.ndarray, dst: np.ndarray, layers: int) -> list[np.ndarray]:
    """``[A_1, …, A_L]`` as boolean masks over ``n_nodes`` nodes, from the changed node ids and the edges."""
    current = np.zeros(n_nodes, dtype=bool)
    current[changed] = True
    out = []
    for _ in range(layers):
        current = _grow(current, src, dst)
        out.append(current)
    return out


def affected_masks(graph: UserGraph, changed: Sequence[int], layers: int) -> list[np.ndarray]:
    """``[A_1, …, A_L]`` as boolean masks over the graph's slots (see the module docstring)."""
    ids = np.fromiter(changed, dtype=np.int64, count=len(changed))
    return _affected(ids, graph.n_nodes, graph.edge_src, graph.edge_dst, layers)


def affected_sets(graph: UserGraph, changed: frozenset[int] | set[int], layers: int) -> list[set[int]]:
    """``[A_1, …, A_L]`` for the changed slots, as sets of slots."""
    return [set(np.flatnonzero(m).tolist()) for m in affected_masks(graph, sorted(changed), layers)]


class _Batch(NamedTuple):
    """The users of one micro-batch that take the incremental path, as one disjoint union: node
    ``ptr[u] + slot`` is slot ``slot`` of user ``u``, and every array spans all of them."""

    graphs: list[UserGraph]
    layers: list[np.ndarray]
    """Per user ``[L + 1, n_nodes, d]`` float32, writable: refreshed in place and kept as its cache."""
    base: np.ndarray
    """Per user, the ``state_version`` its cache was computed at."""
    ptr: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    sets: list[np.ndarray]
    """``A_1..A_L`` as masks over the batch's nodes."""
    columns: Gathered
    """The users' node columns, versions, newest slots and item rows (:func:`graph_state.gather`)."""


class IncrementalEncoder:
    """Embeds user graphs, reusing and refreshing their per-node layer caches."""

    def __init__(self, checkpoint: Checkpoint, policy: IncrementalPolicy | None = None) -> None:
        self.checkpoint = checkpoint
        self.policy = policy or IncrementalPolicy()
        enc = checkpoint.encoder
        self.supported = checkpoint.config.similarity_k == 0 and all(
            getattr(layer, "conv", "") == "gcn" for layer in enc.layers
        )
        self._prefix = _key_prefix(checkpoint)
        graph_layers = [cast(GraphLayer, layer) for layer in enc.layers]
        self._layer_transforms = [(layer, layer.sums_transform()) for layer in graph_layers] if self.supported else []
        self.stats = {"full": 0, "incremental": 0, "recomputed_nodes": 0, "total_nodes": 0}
        self._in_flight: list[_Remote] = []
        """Forwards in the forward process that will give graphs their layer caches, oldest first."""

    # ---- entry point -----------------------------------------------------------

    def embed_many(self, graphs: Sequence[UserGraph], deltas: Sequence[UserDelta | None]) -> np.ndarray:
        """One vector per graph; refreshes every graph's cache as a side effect."""
        vectors = self.embed_deferred(graphs, deltas, None).result()
        assert vectors is not None  # computed here: nothing was posted
        return vectors

    def embed_deferred(
        self,
        graphs: Sequence[UserGraph],
        deltas: Sequence[UserDelta | None],
        forward: ForwardProcess | None,
        extra: object = None,
    ) -> Deferred:
        """:meth:`embed_many`, its full forward handed to ``forward`` when given (collect the vectors
        with ``.result()``): the incremental part runs here, now. A graph the full forward keeps a
        cache for gets it when the vectors are collected, if it did not change in between. With an
        ``extra``, every batch goes to ``forward`` (even one without a full forward) and its ``post``
        runs there on the batch's vectors and ``extra`` (``Deferred.posted``)."""
        cfg = self.checkpoint.config
        if self._in_flight:
            # A graph of this batch waits for its layer cache from a forward still in the process
            # (the batch before): collect that one first, so it can take the incremental path as it
            # would have without a process (and its vector is the same bits).
            ids = {id(g) for g in graphs}
            needed = [i for i, flying in enumerate(self._in_flight) if not flying.kept_ids.isdisjoint(ids)]
            if needed:
                for flying in self._in_flight[: needed[-1] + 1]:  # in the order they were handed over
                    flying.result()
        out = np.zeros((len(graphs), cfg.dim), dtype=np.float32)
        full: list[int] = []
        incr: list[int] = []
        layers: list[np.ndarray] = []
        for i, (graph, delta) in enumerate(zip(graphs, deltas, strict=True)):
            cached = self._cached(graph, delta)
            if cached is None:
                full.append(i)
            else:
                incr.append(i)
                layers.append(cached)
        p = self.policy
        # Mid-size graphs keep and use their caches only in batches with enough of them (a backlog):
        # under light load their caches would hold memory (38 KB at 50 nodes) for nothing.
        mid = sum(1 for g in graphs if p.batched_min_nodes <= g.n_nodes < p.min_nodes)
        small = [j for j, i in enumerate(incr) if graphs[i].n_nodes < p.min_nodes]
        if small and len(small) < p.batched_min_graphs:  # too few to pay the path's fixed cost
            full.extend(incr[j] for j in small)
            keep = sorted(set(range(len(incr))) - set(small))
            incr, layers = [incr[j] for j in keep], [layers[j] for j in keep]
        batch = None
        while incr:
            # ``deltas[i]`` is set for every candidate (``_cached`` returned its layers).
            batch, too_large = self._batch(
                [graphs[i] for i in incr],
                layers,
                [deltas[i] for i in incr],  # type: ignore[misc]
            )
            if not too_large:
                break
            full.extend(incr[j] for j in too_large)
            keep = sorted(set(range(len(incr))) - set(too_large))
            incr, layers, batch = [incr[j] for j in keep], [layers[j] for j in keep], None
        remote: _Remote | None = None
        posting = extra is not None and forward is not None and self._hands_to(forward)
        with torch.inference_mode():
            if batch is not None:
                out[incr] = self._incremental(batch)
            if full or posting:
                full.sort()
                computed = self._full([graphs[i] for i in full], mid >= p.batched_min_graphs, forward, out, full, extra)
                if isinstance(computed, np.ndarray):
                    out[full] = computed
                else:
                    remote = computed
        self.stats["full"] += len(full)
        self.stats["incremental"] += len(incr)
        return Deferred(out, remote)

    def _cached(self, graph: UserGraph, delta: UserDelta | None) -> np.ndarray | None:
        """The graph's layer cache as a writable ``[L + 1, n_nodes, d]`` array when it can be refreshed
        incrementally (its rows for new slots zero), else ``None``."""
        p = self.policy
        n = graph.n_nodes
        if not (p.enabled and self.supported and delta is not None and n >= min(p.min_nodes, p.batched_min_nodes)):
            return None
        if graph.cache_key != f"{self._prefix}{delta.base_version}":
            return None
        cached = graph.cache_array()
        if cached is None:
            return None
        cfg = self.checkpoint.config
        depth = cfg.layers + 1
        rows = cached.size // (depth * cfg.dim)
        if rows * depth * cfg.dim != cached.size or rows > n:
            return None
        if rows < n and not set(range(rows, n)) <= delta.slots:
            return None
        if rows == n and cached.ndim == 3 and cached.flags.writeable:
            return cached  # the graph's own array from the previous batch: refreshed in place
        layers = np.zeros((depth, n, cfg.dim), dtype=np.float32)
        layers[:, :rows] = cached.reshape(depth, rows, cfg.dim)
        return layers

    def _batch(
        self, graphs: list[UserGraph], layers: list[np.ndarray], deltas: Sequence[UserDelta]
    ) -> tuple[_Batch, list[int]]:
        """The users as one :class:`_Batch`, and those whose ``A_L`` exceeds the policy's share."""
        columns = gather_columns(graphs, self.checkpoint.index)
        sizes = columns.sizes
        ptr = np.zeros(len(graphs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        src, dst = columns.edges[0], columns.edges[1]
        counts = np.fromiter((len(d.slots) for d in deltas), dtype=np.int64, count=len(deltas))
        slots = np.fromiter(chain.from_iterable(d.slots for d in deltas), dtype=np.int64, count=int(counts.sum()))
        changed = slots + np.repeat(ptr[:-1], counts)
        sets = _affected(changed, int(ptr[-1]), src, dst, self.checkpoint.config.layers)
        reached = np.add.reduceat(sets[-1], ptr[:-1], dtype=np.int64)
        too_large = np.flatnonzero(reached > self.policy.full_share * sizes).tolist()
        base = np.fromiter((d.base_version for d in deltas), dtype=np.int64, count=len(deltas))
        return _Batch(graphs, layers, base, ptr, src, dst, columns.edges[2].view(np.float64), sets, columns), too_large

    # ---- full forward ------------------------------------------------------------

    def _full(
        self,
        graphs: Sequence[UserGraph],
        keep_mid: bool = True,
        forward: ForwardProcess | None = None,
        out: np.ndarray | None = None,
        rows: list[int] | None = None,
        extra: object = None,
    ) -> np.ndarray | _Remote:
        """The batched full forward (by ``forward`` when given and alive: the batch's ``out`` and the
        ``rows`` of these graphs in it go along, see :meth:`ForwardProcess.submit`); refreshes the
        caches of graphs that may be recomputed incrementally next time (``keep_mid``: mid-size ones
        too) and drops the others'."""
        p = self.policy
        keep_from = (
            (min(p.min_nodes, p.batched_min_nodes) if keep_mid else p.min_nodes)
            if p.enabled and self.supported
            else None
        )
        keep: list[int] = []
        n_nodes = 0
        for i, graph in enumerate(graphs):
            n_nodes += graph.n_nodes
            if keep_from is not None and graph.n_nodes >= keep_from:
                keep.append(i)
            elif graph.has_cache:
                graph.cache_key, graph.cache = "", b""  # not to be recomputed incrementally next time
        self.stats["recomputed_nodes"] += n_nodes
        self.stats["total_nodes"] += n_nodes
        columns = gather_columns(graphs, self.checkpoint.index) if graphs else None
        kept = [(graphs[i], graphs[i].state_version) for i in keep]
        if forward is not None and self._hands_to(forward):
            if out is not None and rows is not None and len(rows) == len(out):
                out = rows = None  # every row is the forward's (in order): the answer's vectors are the batch's
            remote = _Remote(self, forward.submit(columns, keep, out, rows, extra), kept)
            if kept:
                self._in_flight.append(remote)
            return remote
        assert columns is not None  # only a job that posts comes without graphs, and it goes to the process
        user, caches = forward_with_caches(self.checkpoint.encoder, columns_to_batch(columns), keep)
        for (graph, _), layers in zip(kept, caches, strict=True):
            self._store(graph, layers)
        return user

    def _hands_to(self, forward: ForwardProcess) -> bool:
        """Whether ``forward`` computes this engine's full forwards (alive, on the same model)."""
        return forward.alive and forward.checkpoint is self.checkpoint

    def _store(self, graph: UserGraph, layers: np.ndarray, version: int | None = None) -> None:
        """Keep ``layers`` as the graph's cache of ``version`` (default: its current one)."""
        graph.cache = layers
        graph.cache_key = f"{self._prefix}{graph.state_version if version is None else version}"

    # ---- incremental forward -----------------------------------------------------

    def _incremental(self, batch: _Batch) -> np.ndarray:
        """Every user of the batch at once: the arrays below span the concatenated graphs.

        Every layer recomputes all of ``A_L`` (``targets``), not only its own ``A_l``: a node of
        ``A_L`` outside ``A_l`` gets its cached value again (its inputs did not change), and in
        exchange every layer shares one message matrix (:meth:`_messages`) and one sorted target
        list. The caches are read in one pass over the users (the previous layers' states on
        ``U``) and written in one (every block's rows of the targets, and the readout terms).
        """
        enc = self.checkpoint.encoder
        graphs, caches, ptr = batch.graphs, batch.layers, batch.ptr
        n_total, n_layers = int(ptr[-1]), len(enc.layers)
        last = batch.sets[-1]
        targets = np.flatnonzero(last)
        # Readout terms change where a node's last layer or its recency bucket does: a bucket is
        # log2 of "events ago", so from one version to the next only a few nodes cross into the next.
        sizes = np.diff(ptr)
        nodes = batch.columns.nodes  # every node column of the batch
        seq = nodes[LAST_SEQ]
        ago = np.repeat(batch.columns.versions, sizes) - seq
        moved = np.flatnonzero(recency_moved(np.repeat(batch.base, sizes) - seq, ago) & ~last)
        matrix, u_nodes, own = self._messages(batch, targets)
        # Each node set split by user, as slots of the user's own graph and cache.
        (u_at, u_slots), (m_at, m_slots), (t_at, t_slots) = (_by_user(a, ptr) for a in (u_nodes, moved, targets))
        h = enc.inputs_of(
            torch.from_numpy(batch.columns.rows[u_nodes]),
            torch.from_numpy(nodes[LAST_ACTION, u_nodes]),
            torch.from_numpy(np.log1p(nodes[COUNTS, u_nodes].astype(np.float32))),
        )
        # From the users' caches: the previous layers' states on U, the moved nodes' last layer.
        previous = torch.from_numpy(take_rows(caches, 0, n_layers - 1, u_at, u_slots))  # [L - 1, |U|, d]
        moved_h = take_rows(caches, n_layers - 1, n_layers, m_at, m_slots)[0]
        outputs = []
        for l_idx, (layer, transform) in enumerate(self._layer_transforms):
            out = layer.from_sums((matrix @ h).view(len(targets), 2 * h.shape[1]), h.index_select(0, own), transform)
            outputs.append(out)
            if l_idx + 1 < n_layers:
                h = previous[l_idx].index_copy_(0, own, out)
        # The readout terms of the targets (from their new last layer) and of the moved nodes.
        terms = enc.readout_terms(
            torch.cat([outputs[-1], torch.from_numpy(moved_h)]),
            torch.from_numpy(recency_buckets(ago[np.concatenate([targets, moved])])),
        )
        fresh = torch.stack([*outputs, terms[: len(targets)]]).numpy()  # [L + 1, |targets|, d]
        moved_terms = terms[len(targets) :].numpy()
        put_rows(caches, 0, n_layers + 1, t_at, t_slots, fresh)
        put_rows(caches, n_layers, n_layers + 1, m_at, m_slots, moved_terms[np.newaxis])
        # The newest node of a graph with a new event is in A_L: its state is a row of the last layer's output.
        newest = ptr[:-1] + batch.columns.last
        at = np.minimum(np.searchsorted(targets, newest), max(len(targets) - 1, 0))
        if len(targets) and (targets[at] == newest).all():
            h_last = outputs[-1][torch.from_numpy(at)]
        else:  # a graph republished without a change
            h_last = torch.from_numpy(
                np.stack([c[n_layers - 1, g.last_slot] for g, c in zip(graphs, caches, strict=True)])
            )
        # The readout reads each graph's cache where it lies: no copy of a large graph per event.
        user = enc.readout_cached(h_last, [(c[n_layers - 1], c[n_layers]) for c in caches])
        for graph, cache in zip(graphs, caches, strict=True):
            self._store(graph, cache)
        self.stats["recomputed_nodes"] += len(targets)
        self.stats["total_nodes"] += n_total
        return user.numpy()

    @staticmethod
    def _messages(batch: _Batch, targets: np.ndarray) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """Every message into the targets as one sparse matrix over ``U`` (the targets and their
        neighbours): two rows per target, its forward and its backward convolution's normalised
        sum (self loop included). Returns the matrix, ``U`` (sorted batch-wide ids) and each
        target's row in ``U``.
        """
        ptr, src, dst, weight = batch.ptr, batch.src, batch.dst, batch.weight
        n_total, n_t = int(ptr[-1]), len(targets)
        # GCN normalisation from the full graphs (self loops of weight 1 included).
        in_deg = 1.0 + np.bincount(dst, weights=weight, minlength=n_total)
        out_deg = 1.0 + np.bincount(src, weights=weight, minlength=n_total)
        last = batch.sets[-1]
        into, out_of = np.flatnonzero(last[dst]), np.flatnonzero(last[src])  # forward / backward messages
        f_src, f_dst, f_w = src[into], dst[into], weight[into]
        b_src, b_dst, b_w = dst[out_of], src[out_of], weight[out_of]  # reversed: dst's state into src
        u_mask = last.copy()
        u_mask[f_src] = True
        u_mask[b_src] = True
        u_nodes = np.flatnonzero(u_mask)  # ~5 % of the batch at 1,000 nodes
        # Positions in the targets and in U through maps over the batch's ids that are written only
        # where read (``np.empty``: no pass over the batch; a binary search per message cost 4x more).
        at_target, at_u = np.empty(n_total, dtype=np.int64), np.empty(n_total, dtype=np.int64)
        at_target[targets] = np.arange(n_t)
        at_u[u_nodes] = np.arange(len(u_nodes))
        rows = np.concatenate([2 * at_target[f_dst], 2 * at_target[b_dst] + 1, np.arange(2 * n_t)])
        own = at_u[targets]
        cols = np.concatenate([at_u[f_src], at_u[b_src], np.repeat(own, 2)])
        loops = np.empty(2 * n_t)
        loops[0::2], loops[1::2] = 1.0 / in_deg[targets], 1.0 / out_deg[targets]
        values = np.concatenate(
            [f_w / np.sqrt(in_deg[f_src] * in_deg[f_dst]), b_w / np.sqrt(out_deg[b_src] * out_deg[b_dst]), loops]
        ).astype(np.float32)
        by_row = stable_order(rows)
        crow = np.zeros(2 * n_t + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=2 * n_t), out=crow[1:])
        matrix = sparse_csr(crow, cols[by_row], values[by_row], (2 * n_t, len(u_nodes)))
        return matrix, u_nodes, torch.from_numpy(own)


def _by_user(nodes: np.ndarray, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted batch-wide node ids split by user: where each user's run starts (``ptr``-like), and
    each node's slot in its own graph."""
    at = np.searchsorted(nodes, ptr)
    return at, nodes - np.repeat(ptr[:-1], np.diff(at))
