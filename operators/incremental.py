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
nodes. Users without a valid cache, or whose ``A_L`` covers most of the graph,
take the batched full forward instead — that choice is the measured rule
``IncrementalPolicy.full_share`` (see docs/benchmarks.md).

Models with similarity edges (``EncoderConfig.similarity_k > 0``) always take the full
forward: one new or evicted item can change the k nearest neighbours of every node of
the graph, so the affected set is the whole graph anyway, and recomputing it from
scratch is exact by construction. Side features change only node inputs, which are a
function of the item alone, so they keep the incremental path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch_geometric.utils import scatter

from graph_state import UserGraph
from operators.checkpoint import Checkpoint
from operators.item_index import ItemIndex
from operators.tensors import GraphBatch, graphs_to_batch, recency_buckets

CACHE_LAYOUT = 1


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


def affected_sets(graph: UserGraph, changed: frozenset[int] | set[int], layers: int) -> list[set[int]]:
    """``[A_1, …, A_L]`` for the changed slots (see the module docstring)."""
    out: list[set[int]] = []
    frontier = set(changed)
    current = set(changed)
    for _ in range(layers):
        grown = set(current)
        for slot in frontier:
            grown.update(graph.out_edges[slot])
            grown.update(graph.in_neighbors(slot))
        frontier = grown - current
        current = grown
        out.append(set(current))
    return out


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
        incr: list[tuple[int, list[set[int]], np.ndarray]] = []
        for i, (graph, delta) in enumerate(zip(graphs, deltas, strict=True)):
            plan = self._plan(graph, delta)
            if plan is None:
                full.append(i)
            else:
                incr.append((i, *plan))
        with torch.inference_mode():
            if full:
                vectors = self._full([graphs[i] for i in full])
                out[full] = vectors
            if incr:
                vectors = self._incremental([graphs[i] for i, _, _ in incr], [(a, c) for _, a, c in incr])
                out[[i for i, _, _ in incr]] = vectors
        self.stats["full"] += len(full)
        self.stats["incremental"] += len(incr)
        return out

    def _plan(self, graph: UserGraph, delta: UserDelta | None) -> tuple[list[set[int]], np.ndarray] | None:
        p = self.policy
        if not (p.enabled and self.supported and delta is not None and graph.n_nodes >= p.min_nodes):
            return None
        if graph.cache_key != cache_key(self.checkpoint, delta.base_version):
            return None
        cfg = self.checkpoint.config
        cached = np.frombuffer(graph.cache, dtype=np.float32)
        rows = cached.size // (cfg.layers * cfg.dim)
        if rows * cfg.layers * cfg.dim != cached.size or rows > graph.n_nodes:
            return None
        missing = set(range(rows, graph.n_nodes))
        if not missing <= delta.slots:
            return None
        sets = affected_sets(graph, delta.slots, cfg.layers)
        if len(sets[-1]) > p.full_share * graph.n_nodes:
            return None
        layers = np.zeros((cfg.layers, graph.n_nodes, cfg.dim), dtype=np.float32)
        layers[:, :rows] = cached.reshape(cfg.layers, rows, cfg.dim)
        return sets, layers

    # ---- full forward ------------------------------------------------------------

    def _full(self, graphs: Sequence[UserGraph]) -> np.ndarray:
        enc = self.checkpoint.encoder
        b = graphs_to_batch(graphs, self.checkpoint.index)
        h = enc.node_inputs(b)
        sim = enc.similarity_edges(b)
        states = []
        for layer in enc.layers:
            h = layer(h, b.edge_index, b.edge_weight, sim)
            states.append(h)
        user, _ = enc.readout(h, b)
        stacked = torch.stack(states).numpy()  # [L, N, d]
        ptr = b.ptr.tolist()
        keep_from = self.policy.min_nodes if self.policy.enabled and self.supported else None
        for i, graph in enumerate(graphs):
            if keep_from is not None and graph.n_nodes >= keep_from:
                self._store(graph, stacked[:, ptr[i] : ptr[i + 1]])
            elif graph.cache:
                graph.cache_key, graph.cache = "", b""  # too small to ever be recomputed incrementally
            self.stats["recomputed_nodes"] += graph.n_nodes
            self.stats["total_nodes"] += graph.n_nodes
        return user.numpy()

    def _store(self, graph: UserGraph, layers: np.ndarray) -> None:
        graph.cache = np.ascontiguousarray(layers, dtype=np.float32).tobytes()
        graph.cache_key = cache_key(self.checkpoint, graph.state_version)

    # ---- incremental forward -----------------------------------------------------

    def _incremental(
        self, graphs: Sequence[UserGraph], plans: Sequence[tuple[list[set[int]], np.ndarray]]
    ) -> np.ndarray:
        enc = self.checkpoint.encoder
        index = self.checkpoint.index
        n_layers = len(enc.layers)
        layer_states = [torch.from_numpy(layers) for _, layers in plans]  # each [L, N, d], updated in place
        for l_idx, layer in enumerate(enc.layers):
            targets_per_user = [sorted(sets[l_idx]) for sets, _ in plans]
            # Sources: targets and their neighbours, per user; their H^(l-1) feeds the convolution.
            src_nodes: list[list[int]] = []
            for g, targets in zip(graphs, targets_per_user, strict=True):
                s = set(targets)
                for t in targets:
                    s.update(g.out_edges[t])
                    s.update(g.in_neighbors(t))
                src_nodes.append(sorted(s))
            if l_idx == 0:
                h_src = self._inputs(graphs, src_nodes, index)
            else:
                h_src = torch.cat([st[l_idx - 1][nodes] for st, nodes in zip(layer_states, src_nodes, strict=True)])
            h_out = self._layer(layer, graphs, targets_per_user, src_nodes, h_src)
            offset = 0
            for st, targets in zip(layer_states, targets_per_user, strict=True):
                st[l_idx][targets] = h_out[offset : offset + len(targets)]
                offset += len(targets)
        # Readout over every node of each user, from the refreshed last layer.
        h_last = torch.cat([st[n_layers - 1] for st in layer_states])
        b = _readout_batch(graphs)
        user, _ = enc.readout(h_last, b)
        for g, st, (sets, _) in zip(graphs, layer_states, plans, strict=True):
            self._store(g, st.numpy())
            self.stats["recomputed_nodes"] += len(sets[-1])
            self.stats["total_nodes"] += g.n_nodes
        return user.numpy()

    def _inputs(self, graphs: Sequence[UserGraph], nodes: Sequence[list[int]], index: ItemIndex) -> torch.Tensor:
        enc = self.checkpoint.encoder
        rows: list[int] = []
        actions: list[int] = []
        counts: list[float] = []
        for g, ns in zip(graphs, nodes, strict=True):
            rows.extend(index.row(g.item_ids[n]) for n in ns)
            actions.extend(g.last_action[n] for n in ns)
            counts.extend(math.log1p(g.counts[n]) for n in ns)
        partial = GraphBatch(
            item_rows=torch.tensor(rows, dtype=torch.long),
            actions=torch.tensor(actions, dtype=torch.long),
            log_counts=torch.tensor(counts, dtype=torch.float32),
            recency=torch.zeros(len(rows), dtype=torch.long),
            edge_index=torch.zeros((2, 0), dtype=torch.long),
            edge_weight=torch.zeros(0),
            batch=torch.zeros(len(rows), dtype=torch.long),
            last_node=torch.zeros(0, dtype=torch.long),
            ptr=torch.zeros(1, dtype=torch.long),
        )
        return enc.node_inputs(partial)

    def _layer(
        self,
        layer,
        graphs: Sequence[UserGraph],
        targets_per_user: Sequence[list[int]],
        src_nodes: Sequence[list[int]],
        h_src: torch.Tensor,
    ) -> torch.Tensor:
        """GCN layer outputs of the target nodes, with normalisation from the full graphs."""
        f_src, f_tgt, f_w, b_src, b_tgt, b_w, self_src = [], [], [], [], [], [], []
        self_f, self_b = [], []
        src_offset = 0
        tgt_offset = 0
        for g, targets, sources in zip(graphs, targets_per_user, src_nodes, strict=True):
            local = {n: src_offset + i for i, n in enumerate(sources)}
            need = sources
            in_deg = {n: 1.0 + sum(g.out_edges[u][n] for u in g.in_neighbors(n)) for n in need}
            out_deg = {n: 1.0 + sum(g.out_edges[n].values()) for n in need}
            for j, t in enumerate(targets):
                tj = tgt_offset + j
                for u in g.in_neighbors(t):  # forward conv: u → t
                    f_src.append(local[u])
                    f_tgt.append(tj)
                    f_w.append(g.out_edges[u][t] / np.sqrt(in_deg[u] * in_deg[t]))
                for x, w in g.out_edges[t].items():  # backward conv: t ← x in the reversed graph
                    b_src.append(local[x])
                    b_tgt.append(tj)
                    b_w.append(w / np.sqrt(out_deg[x] * out_deg[t]))
                self_src.append(local[t])
                self_f.append(1.0 / in_deg[t])
                self_b.append(1.0 / out_deg[t])
            src_offset += len(sources)
            tgt_offset += len(targets)
        n_t = tgt_offset
        xf = layer.fwd.lin(h_src)
        xb = layer.bwd.lin(h_src)
        selfs = torch.tensor(self_src, dtype=torch.long)
        mf = xf[selfs] * torch.tensor(self_f, dtype=torch.float32).unsqueeze(-1)
        mb = xb[selfs] * torch.tensor(self_b, dtype=torch.float32).unsqueeze(-1)
        if f_src:
            msg = xf[torch.tensor(f_src)] * torch.tensor(f_w, dtype=torch.float32).unsqueeze(-1)
            mf = mf + scatter(msg, torch.tensor(f_tgt), dim=0, dim_size=n_t, reduce="sum")
        if b_src:
            msg = xb[torch.tensor(b_src)] * torch.tensor(b_w, dtype=torch.float32).unsqueeze(-1)
            mb = mb + scatter(msg, torch.tensor(b_tgt), dim=0, dim_size=n_t, reduce="sum")
        m = mf + layer.fwd.bias + mb + layer.bwd.bias
        h_self = h_src[selfs]
        return layer.norm(h_self + torch.relu(m))


def _readout_batch(graphs: Sequence[UserGraph]) -> GraphBatch:
    sizes = [g.n_nodes for g in graphs]
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    batch = np.repeat(np.arange(len(graphs)), sizes)
    recency = recency_buckets(
        np.concatenate([g.state_version - np.asarray(g.last_seq, dtype=np.int64) for g in graphs])
    )
    last = np.asarray([g.last_slot for g in graphs]) + ptr[:-1]
    empty = torch.zeros(0, dtype=torch.long)
    return GraphBatch(
        item_rows=empty,
        actions=empty,
        log_counts=torch.zeros(0),
        recency=torch.from_numpy(recency),
        edge_index=torch.zeros((2, 0), dtype=torch.long),
        edge_weight=torch.zeros(0),
        batch=torch.from_numpy(batch),
        last_node=torch.from_numpy(last),
        ptr=torch.from_numpy(ptr),
    )
