"""Incremental L-hop recompute: only nodes whose layer outputs can change are recomputed.

Each user graph carries its per-node layer outputs ``H^1..H^L`` (``UserGraph.cache``).
When a micro-batch changes a set of slots ``C`` (new or updated nodes and both
endpoints of every changed edge), the nodes whose layer-``l`` output can differ are

    A_1 = C + N(C),    A_l = A_(l-1) + N(A_(l-1))      (+ = set union)

with ``N`` the undirected neighbourhood: a node's GCN output depends on its own
and its neighbours' inputs, the weights of its edges and the degrees of itself
and its neighbours, and a degree changes only at an endpoint of a changed edge.
Only ``A_l`` is recomputed at layer ``l`` (with degree normalisation computed
from the full graph), the cached rest is reused, and the readout runs over all
nodes. Besides ``H^1..H^L`` the cache keeps each node's readout projection
``att_node(H^L)`` (the readout part that a node's own state decides), refreshed for
``A_L`` only, so the readout of a large graph is elementwise work, not a matmul per node.
Everything per node is numpy or torch over the concatenated columns of the batch's
graphs: the Python work per user is constant, whatever the window. Users without a
valid cache, or whose ``A_L`` covers most of the graph, take the batched full forward
instead — that choice is the measured rule ``IncrementalPolicy.full_share`` (see docs/benchmarks.md).

Models with similarity edges (``EncoderConfig.similarity_k > 0``) always take the full
forward: one new or evicted item can change the k nearest neighbours of every node of
the graph, so the affected set is the whole graph anyway, and recomputing it from
scratch is exact by construction. Side features change only node inputs, which are a
function of the item alone, so they keep the incremental path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from graph_state import UserGraph
from operators.checkpoint import Checkpoint
from operators.encoder import GcnPlan
from operators.tensors import GraphBatch, graphs_to_batch, recency_buckets

CACHE_LAYOUT = 2
"""1: ``[L, N, d]`` layer outputs; 2: ``[L + 1, N, d]``, the last row block the readout projection."""


class UserDelta(NamedTuple):
    """What changed in one user's graph since its cache was written (a tuple: one per user per batch)."""

    base_version: int
    """``state_version`` of the graph the cache must belong to."""
    slots: frozenset[int]
    """Changed slots (nodes and endpoints of changed edges)."""


@dataclass(frozen=True)
class IncrementalPolicy:
    enabled: bool = True
    full_share: float = 0.5
    """Recompute a user fully when ``|A_L|`` exceeds this share of its nodes."""
    min_nodes: int = 64
    """Graphs this small are recomputed fully: below ~64 nodes the batched full forward is
    cheaper than the per-user bookkeeping of the incremental path (bench/history_length.py)."""


def cache_key(checkpoint: Checkpoint, state_version: int) -> str:
    cfg = checkpoint.config
    return f"{checkpoint.model_version}:{cfg.layers}x{cfg.dim}:L{CACHE_LAYOUT}@{state_version}"


def _grow(mask: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``mask`` plus every node one undirected edge away from it."""
    out = mask.copy()
    out[dst[mask[src]]] = True
    out[src[mask[dst]]] = True
    return out


def affected_masks(graph: UserGraph, changed: Sequence[int], layers: int) -> list[np.ndarray]:
    """``[A_1, …, A_L]`` as boolean masks over the graph's slots (see the module docstring)."""
    current = np.zeros(graph.n_nodes, dtype=bool)
    current[np.fromiter(changed, dtype=np.int64, count=len(changed))] = True
    src, dst = graph.edge_src, graph.edge_dst
    out = []
    for _ in range(layers):
        current = _grow(current, src, dst)
        out.append(current)
    return out


def affected_sets(graph: UserGraph, changed: frozenset[int] | set[int], layers: int) -> list[set[int]]:
    """``[A_1, …, A_L]`` for the changed slots, as sets of slots."""
    return [set(np.flatnonzero(m).tolist()) for m in affected_masks(graph, sorted(changed), layers)]


class _Plan(NamedTuple):
    graph: UserGraph
    layers: np.ndarray
    """``[L + 1, n_nodes, d]`` float32, writable: refreshed in place and kept as the graph's cache."""
    sets: list[np.ndarray]
    """``A_1..A_L`` as masks over the graph's slots."""


class IncrementalEncoder:
    """Embeds user graphs, reusing and refreshing their per-node layer caches."""

    def __init__(self, checkpoint: Checkpoint, policy: IncrementalPolicy | None = None) -> None:
        self.checkpoint = checkpoint
        self.policy = policy or IncrementalPolicy()
        enc = checkpoint.encoder
        self.supported = checkpoint.config.similarity_k == 0 and all(
            getattr(layer, "conv", "") == "gcn" for layer in enc.layers
        )
        self.stats = {"full": 0, "incremental": 0, "recomputed_nodes": 0, "total_nodes": 0}

    # ---- entry point -----------------------------------------------------------

    def embed_many(self, graphs: Sequence[UserGraph], deltas: Sequence[UserDelta | None]) -> np.ndarray:
        """One vector per graph; refreshes every graph's cache as a side effect."""
        cfg = self.checkpoint.config
        out = np.zeros((len(graphs), cfg.dim), dtype=np.float32)
        full: list[int] = []
        incr: list[int] = []
        plans: list[_Plan] = []
        for i, (graph, delta) in enumerate(zip(graphs, deltas, strict=True)):
            plan = self._plan(graph, delta)
            if plan is None:
                full.append(i)
            else:
                incr.append(i)
                plans.append(plan)
        with torch.inference_mode():
            if full:
                out[full] = self._full([graphs[i] for i in full])
            if incr:
                out[incr] = self._incremental(plans)
        self.stats["full"] += len(full)
        self.stats["incremental"] += len(incr)
        return out

    def _plan(self, graph: UserGraph, delta: UserDelta | None) -> _Plan | None:
        p = self.policy
        n = graph.n_nodes
        if not (p.enabled and self.supported and delta is not None and n >= p.min_nodes):
            return None
        if graph.cache_key != cache_key(self.checkpoint, delta.base_version):
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
        sets = affected_masks(graph, sorted(delta.slots), cfg.layers)
        if int(sets[-1].sum()) > p.full_share * n:
            return None
        if rows == n and cached.ndim == 3 and cached.flags.writeable:
            layers = cached  # the graph's own array from the previous batch: refreshed in place
        else:
            layers = np.zeros((depth, n, cfg.dim), dtype=np.float32)
            layers[:, :rows] = cached.reshape(depth, rows, cfg.dim)
        return _Plan(graph, layers, sets)

    # ---- full forward ------------------------------------------------------------

    def _full(self, graphs: Sequence[UserGraph]) -> np.ndarray:
        enc = self.checkpoint.encoder
        b = graphs_to_batch(graphs, self.checkpoint.index)
        h = enc.node_inputs(b)
        sim = enc.similarity_edges(b)
        plan = enc.gcn_plan(b)
        states = []
        for layer in enc.layers:
            h = layer(h, b.edge_index, b.edge_weight, sim, plan)
            states.append(h)
        projected = enc.att_node(h)
        user, _ = enc.readout_projected(h, projected, b)
        keep_from = self.policy.min_nodes if self.policy.enabled and self.supported else None
        stacked: np.ndarray | None = None
        ptr = b.ptr.tolist()
        for i, graph in enumerate(graphs):
            if keep_from is not None and graph.n_nodes >= keep_from:
                if stacked is None:
                    stacked = torch.stack([*states, projected]).numpy()  # [L + 1, N, d]
                self._store(graph, stacked[:, ptr[i] : ptr[i + 1]].copy())
            elif graph.has_cache:
                graph.cache_key, graph.cache = "", b""  # too small to ever be recomputed incrementally
            self.stats["recomputed_nodes"] += graph.n_nodes
            self.stats["total_nodes"] += graph.n_nodes
        return user.numpy()

    def _store(self, graph: UserGraph, layers: np.ndarray) -> None:
        graph.cache = layers
        graph.cache_key = cache_key(self.checkpoint, graph.state_version)

    # ---- incremental forward -----------------------------------------------------

    def _incremental(self, plans: Sequence[_Plan]) -> np.ndarray:
        """All plans' users at once: every array below spans the concatenated graphs."""
        enc = self.checkpoint.encoder
        graphs = [p.graph for p in plans]
        sizes = np.fromiter((g.n_nodes for g in graphs), dtype=np.int64, count=len(graphs))
        ptr = np.zeros(len(graphs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        n_total = int(ptr[-1])
        n_edges = np.fromiter((g.n_edges for g in graphs), dtype=np.int64, count=len(graphs))
        offset = np.repeat(ptr[:-1], n_edges)
        edges = np.concatenate([g.edge_block() for g in graphs], axis=1)
        src, dst = edges[0] + offset, edges[1] + offset
        weight = edges[2].view(np.float64)
        # GCN normalisation from the full graphs (self loops of weight 1 included).
        in_deg = 1.0 + np.bincount(dst, weights=weight, minlength=n_total)
        out_deg = 1.0 + np.bincount(src, weights=weight, minlength=n_total)
        # The layers run on the part of the batch a recompute can reach: U = A_L and its
        # neighbours, with the edges that touch A_L (every edge into or out of a target of any
        # layer, since A_l is inside A_L). At 1,000 nodes that is ~5 % of the nodes and edges.
        last = np.concatenate([p.sets[-1] for p in plans])
        touching = last[src] | last[dst]
        u_src, u_dst, u_weight = src[touching], dst[touching], weight[touching]
        u_nodes = np.flatnonzero(_grow(last, u_src, u_dst))  # sorted batch-wide node ids
        local = np.full(n_total, -1, dtype=np.int64)
        local[u_nodes] = np.arange(len(u_nodes))
        u_src, u_dst = local[u_src], local[u_dst]
        u_in, u_out = in_deg[u_nodes], out_deg[u_nodes]
        n_layers = len(enc.layers)
        for l_idx, layer in enumerate(enc.layers):
            targets = np.concatenate([p.sets[l_idx] for p in plans])[u_nodes]
            s_idx = np.flatnonzero(_grow(targets, u_src, u_dst))
            if l_idx == 0:
                h_src = self._inputs(plans, u_nodes[s_idx], ptr)
            else:
                h_src = torch.from_numpy(_gather(plans, l_idx - 1, u_nodes[s_idx], ptr))
            h_out = self._layer(layer, h_src, targets, s_idx, u_src, u_dst, u_weight, u_in, u_out)
            _scatter_back(plans, l_idx, u_nodes[np.flatnonzero(targets)], ptr, h_out.numpy())
        # The readout projection of every node whose last layer changed.
        changed_last = np.flatnonzero(last)
        projected = enc.att_node(torch.from_numpy(_gather(plans, n_layers - 1, changed_last, ptr)))
        _scatter_back(plans, n_layers, changed_last, ptr, projected.numpy())
        # The readout reads each graph's cache where it lies: no copy of a large graph per event.
        h_last = torch.from_numpy(np.stack([p.layers[n_layers - 1][p.graph.last_slot] for p in plans]))
        parts = [
            (
                torch.from_numpy(p.layers[n_layers - 1]),
                torch.from_numpy(p.layers[n_layers]),
                torch.from_numpy(recency_buckets(p.graph.state_version - p.graph.last_seq)),
            )
            for p in plans
        ]
        user = enc.readout_graphs(h_last, parts)
        for p in plans:
            self._store(p.graph, p.layers)
            self.stats["recomputed_nodes"] += int(p.sets[-1].sum())
            self.stats["total_nodes"] += p.graph.n_nodes
        return user.numpy()

    def _inputs(self, plans: Sequence[_Plan], nodes: np.ndarray, ptr: np.ndarray) -> torch.Tensor:
        """Layer inputs of the given (global) nodes, from their graphs' columns."""
        enc = self.checkpoint.encoder
        index = self.checkpoint.index
        bounds = np.searchsorted(nodes, ptr)
        rows: list[int] = []
        actions = []
        counts = []
        for u, p in enumerate(plans):
            local = nodes[bounds[u] : bounds[u + 1]] - ptr[u]
            slot_rows = p.graph.slot_rows(index, index.row)
            rows.extend([slot_rows[i] for i in local.tolist()])
            actions.append(p.graph.last_action[local])
            counts.append(p.graph.counts[local])
        partial = GraphBatch(
            item_rows=torch.tensor(rows, dtype=torch.long),
            actions=torch.from_numpy(np.concatenate(actions).astype(np.int64)),
            log_counts=torch.from_numpy(np.log1p(np.concatenate(counts).astype(np.float32))),
            recency=torch.zeros(len(rows), dtype=torch.long),
            edge_index=torch.zeros((2, 0), dtype=torch.long),
            edge_weight=torch.zeros(0),
            batch=torch.zeros(len(rows), dtype=torch.long),
            last_node=torch.zeros(0, dtype=torch.long),
            ptr=torch.zeros(1, dtype=torch.long),
        )
        return enc.node_inputs(partial)

    @staticmethod
    def _layer(
        layer,
        h_src: torch.Tensor,
        targets: np.ndarray,
        s_idx: np.ndarray,
        src: np.ndarray,
        dst: np.ndarray,
        weight: np.ndarray,
        in_deg: np.ndarray,
        out_deg: np.ndarray,
    ) -> torch.Tensor:
        """GCN layer outputs of the target nodes, given ``h_src`` of ``s_idx``.

        ``targets`` is a mask and ``s_idx``, ``src``, ``dst`` index the same node set (the part of
        the batch the recompute reaches); ``in_deg``/``out_deg`` are those nodes' degrees in their
        full graphs.

        The messages into the targets as a :class:`GcnPlan` over ``h_src``'s rows (both
        directions and the self loops, normalised by the full graphs' degrees), so the layer
        runs the same fused gather and scatter as the full forward.
        """
        n_total = len(targets)
        pos = np.full(n_total, -1, dtype=np.int64)
        pos[s_idx] = np.arange(len(s_idx))
        t_idx = np.flatnonzero(targets)
        tpos = np.full(n_total, -1, dtype=np.int64)
        tpos[t_idx] = np.arange(len(t_idx))
        fe = targets[dst]  # forward conv: src → dst for dst in targets
        be = targets[src]  # backward conv (reversed edges): dst → src for src in targets
        f_src, f_dst = src[fe], dst[fe]
        b_src, b_dst = src[be], dst[be]
        selfs = pos[t_idx]
        own = np.arange(len(t_idx))
        plan = GcnPlan(
            source=torch.from_numpy(np.concatenate([2 * pos[f_src], 2 * pos[b_dst] + 1, 2 * selfs, 2 * selfs + 1])),
            target=torch.from_numpy(np.concatenate([tpos[f_dst], tpos[b_src], own, own])),
            weight=torch.from_numpy(
                np.concatenate(
                    [
                        weight[fe] / np.sqrt(in_deg[f_src] * in_deg[f_dst]),
                        weight[be] / np.sqrt(out_deg[b_dst] * out_deg[b_src]),
                        1.0 / in_deg[t_idx],
                        1.0 / out_deg[t_idx],
                    ]
                ).astype(np.float32)
            ),
        )
        return layer.partial(h_src, plan, torch.from_numpy(selfs))


def _gather(plans: Sequence[_Plan], depth: int, nodes: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Rows ``nodes`` (global, sorted) of cache block ``depth`` of each plan's graph, concatenated."""
    bounds = np.searchsorted(nodes, ptr)
    return np.concatenate([p.layers[depth][nodes[bounds[u] : bounds[u + 1]] - ptr[u]] for u, p in enumerate(plans)])


def _scatter_back(plans: Sequence[_Plan], depth: int, nodes: np.ndarray, ptr: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` (rows of ``nodes``, global, sorted) into cache block ``depth`` of each plan."""
    bounds = np.searchsorted(nodes, ptr)
    for u, p in enumerate(plans):
        lo, hi = bounds[u], bounds[u + 1]
        if hi > lo:
            p.layers[depth][nodes[lo:hi] - ptr[u]] = values[lo:hi]
