"""The graph encoder: GCN message passing over a user graph, then an attention readout."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import scatter

from graph_state import DEFAULT_ACTIONS
from operators.global_view import E_GLOBAL, GlobalView
from operators.tensors import RECENCY_BUCKETS, GraphBatch

CONVS = ("gcn", "gat")
E_CONV = "unknown conv {value!r}; choose one of {choices}."
E_SCALE = "norm_scale must be in [0, 1000] and dropout in [0, 1) (got norm_scale={scale}, dropout={dropout})."
E_DIM = "dim must be between 4 and 1024 and layers between 1 and 8 (got dim={dim}, layers={layers})."
E_SIMILARITY = "similarity_k must be between 0 and 64 (got {value}); 0 switches similarity edges off."
E_FEATURES = "feature_tokens must be >= 0 and set exactly when item_features names a file (got {tokens}, {source!r})."
E_FEATURE_TABLE = (
    "the encoder config has {tokens} item feature tokens but no feature table was given; load the checkpoint."
)
E_GLOBAL_TABLE = "the encoder config has a global view (global_k={k}) but no view was given; load the checkpoint."
OPTIONAL_FIELDS = {"item_features": "", "feature_tokens": 0, "similarity_k": 0, "global_k": 0, "global_window": 1}
"""Fields added after the first checkpoints: left out of ``to_dict`` at their defaults, so a
checkpoint trained before them keeps its config dict and therefore its ``model_version``."""
SIMILARITY_BLOCK = 1 << 24
"""Most padded pair scores computed at once while finding similarity neighbours."""


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the encoder; stored in every checkpoint."""

    dim: int = 64
    layers: int = 2
    conv: str = "gcn"
    hash_buckets: int = 1 << 14
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    dropout: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    norm_scale: float = 0.0
    """When > 0, item and user vectors are L2-normalised and the user vector is scaled by it,
    so a score is ``norm_scale * cosine`` (NISER); 0 keeps plain dot products."""
    item_features: str = ""
    """Side features fused into item vectors: the features file's name and digest ("" = none)."""
    feature_tokens: int = 0
    """Size of the item feature token vocabulary (0 = no side features)."""
    similarity_k: int = 0
    """Similarity edges: link each node to its ``k`` most similar nodes of the same user graph
    (cosine of the item vectors) and pass messages along them with their own convolution
    (0 = temporal transitions only)."""
    global_k: int = 0
    """Global item view (:mod:`operators.global_view`): each item's ``k`` strongest transition
    neighbours over all training histories, mixed into its node input (0 = off)."""
    global_window: int = 1
    """Steps apart two items of a training history may be to count as global neighbours."""

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(E_CONV.format(value=self.conv, choices=CONVS))
        if not (4 <= self.dim <= 1024 and 1 <= self.layers <= 8):
            raise ValueError(E_DIM.format(dim=self.dim, layers=self.layers))
        if not (0.0 <= self.norm_scale <= 1000.0 and 0.0 <= self.dropout < 1.0):
            raise ValueError(E_SCALE.format(scale=self.norm_scale, dropout=self.dropout))
        if not 0 <= self.similarity_k <= 64:
            raise ValueError(E_SIMILARITY.format(value=self.similarity_k))
        if self.feature_tokens < 0 or (self.feature_tokens > 0) != bool(self.item_features):
            raise ValueError(E_FEATURES.format(tokens=self.feature_tokens, source=self.item_features))
        if not (0 <= self.global_k <= 256 and 1 <= self.global_window <= 16):
            raise ValueError(E_GLOBAL.format(k=self.global_k, window=self.global_window))
        object.__setattr__(self, "actions", tuple(self.actions))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in OPTIONAL_FIELDS or v != OPTIONAL_FIELDS[k]}


class FeatureTable(NamedTuple):
    """Token ids of every item embedding row, as CSR (hashed rows have none)."""

    offsets: torch.Tensor  # [n_rows + 1] long
    tokens: torch.Tensor  # [nnz] long

    @classmethod
    def from_numpy(cls, offsets: np.ndarray, tokens: np.ndarray) -> FeatureTable:
        return cls(torch.from_numpy(np.asarray(offsets, np.int64)), torch.from_numpy(np.asarray(tokens, np.int64)))


class GraphLayer(nn.Module):
    """One round of message passing along transitions in both directions, with a residual.

    Forward and backward edges get their own convolution (as SR-GNN's in/out
    adjacency), so "what led here" and "what came next" stay distinguishable.
    """

    def __init__(self, dim: int, conv: str, similarity: bool = False) -> None:
        super().__init__()
        if conv == "gcn":
            self.fwd: nn.Module = GCNConv(dim, dim, add_self_loops=True, normalize=True)
            self.bwd: nn.Module = GCNConv(dim, dim, add_self_loops=True, normalize=True)
        else:
            self.fwd = GATConv(dim, dim, heads=1, edge_dim=1, add_self_loops=True, fill_value=1.0)
            self.bwd = GATConv(dim, dim, heads=1, edge_dim=1, add_self_loops=True, fill_value=1.0)
        self.conv = conv
        self.norm = nn.LayerNorm(dim)
        # Created last so that a model without similarity edges initialises exactly as before.
        self.sim: nn.Module | None = GCNConv(dim, dim, add_self_loops=True, normalize=True) if similarity else None

    def forward(
        self,
        h: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        sim_index: torch.Tensor | None = None,
        plan: GcnPlan | None = None,
    ) -> torch.Tensor:
        """``sim_index``: undirected similarity edges (both directions listed), for layers built with them.

        ``plan``: the batch's normalised GCN adjacency (:func:`gcn_plan`), shared by every layer;
        without one, PyG's ``GCNConv`` normalises the same edges again in each convolution.
        """
        if self.conv == "gcn" and plan is not None:
            m = self._both_directions(h, plan)
        elif self.conv == "gcn":
            rev = edge_index.flip(0)
            m = self.fwd(h, edge_index, edge_weight) + self.bwd(h, rev, edge_weight)
        else:
            rev = edge_index.flip(0)
            attr = edge_weight.unsqueeze(-1)
            m = self.fwd(h, edge_index, attr) + self.bwd(h, rev, attr)
        if self.sim is not None:
            if sim_index is None:
                sim_index = torch.zeros((2, 0), dtype=torch.long, device=h.device)
            m = m + self.sim(h, sim_index)
        return self.norm(h + torch.relu(m))

    def sums_transform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` that :meth:`from_sums` applies: both convolutions' transforms side by side."""
        fwd: GCNConv = self.fwd  # type: ignore[assignment]
        bwd: GCNConv = self.bwd  # type: ignore[assignment]
        with torch.no_grad():
            return torch.cat([fwd.lin.weight, bwd.lin.weight], dim=1), fwd.bias + bwd.bias

    def from_sums(
        self, sums: torch.Tensor, h_self: torch.Tensor, transform: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The layer's outputs for some nodes only (the incremental engine's recompute), from each
        node's normalised neighbour sums: ``sums`` is ``[n, 2d]``, the forward convolution's
        ``sum_j norm_ij h_j`` (self loop included) then the backward one's; ``h_self`` the nodes'
        own inputs; ``transform`` :meth:`sums_transform` (taken once per model).

        ``GCNConv`` transforms each neighbour then sums; summing then transforming is the same linear
        map, and costs one transform per output node instead of one per neighbour.
        """
        norm: nn.LayerNorm = self.norm
        return F.layer_norm(
            torch.relu_(F.linear(sums, *transform)).add_(h_self),
            norm.normalized_shape,
            norm.weight,
            norm.bias,
            norm.eps,
        )

    def _both_directions(self, h: torch.Tensor, plan: GcnPlan) -> torch.Tensor:
        """``GCNConv`` forward along the edges plus ``GCNConv`` backward along them, in one gather and scatter.

        The same function as the two PyG convolutions (self loops of weight 1, symmetric degree
        normalisation per direction, then the bias), up to float summation order.
        """
        fwd: GCNConv = self.fwd  # type: ignore[assignment]
        bwd: GCNConv = self.bwd  # type: ignore[assignment]
        x = F.linear(h, torch.cat([fwd.lin.weight, bwd.lin.weight]))  # [n, 2d]: forward | backward
        rows = x.reshape(-1, h.shape[1])  # row 2i: node i's forward transform, 2i + 1: its backward one
        n = h.shape[0]
        if not torch.is_grad_enabled() and plan.source.shape[0] >= MATRIX_MIN_MESSAGES:
            return (plan.matrix(n, rows.shape[0]) @ rows).add_(fwd.bias + bwd.bias)
        messages = rows[plan.source] * plan.weight.unsqueeze(-1)
        out = h.new_zeros((n, h.shape[1])).index_add_(0, plan.target, messages)
        return out + (fwd.bias + bwd.bias)


def tanh_(t: torch.Tensor) -> torch.Tensor:
    """``t.tanh_()`` for serving: numpy's ``tanh`` in place on the tensor's memory.

    The CPU ``tanh`` of the pinned torch build is slow on some machines: on this project's AMD EPYC
    machine it took 124 µs for 64,000 float32 (one thread, with any ``ATEN_CPU_CAPABILITY``) against
    numpy's 11 µs and torch's own ``sigmoid`` 13 µs, and it was the readout's largest op (14 % of
    the forward on ml-100k, most of the readout over a 1,000-node graph). Both are float32 ``tanh``
    to within 1e-7. A tensor that autograd records, or one numpy cannot view in place, takes torch's.

    >>> x = torch.linspace(-4, 4, 9)
    >>> bool(torch.allclose(tanh_(x.clone()), torch.tanh(x), atol=1e-6, rtol=0))
    True
    """
    if t.requires_grad or not t.is_contiguous() or t.dtype != torch.float32:
        return t.tanh_()
    array = t.numpy()
    np.tanh(array, out=array)
    return t


MATRIX_MIN_MESSAGES = 1024
"""Below this many messages, gathering and scattering them beats building a sparse matrix
(measured: 600 messages 47 vs 55 µs, 1,500: 100 vs 64 µs, 15,000: 3.9 vs 0.5 ms)."""


@dataclass
class GcnPlan:
    """Every message of both GCN directions of a batch, with its normalised weight (see :func:`gcn_plan`)."""

    source: torch.Tensor
    """Row of the message's transformed source: ``2 j`` (forward conv) or ``2 j + 1`` (backward conv)."""
    target: torch.Tensor
    weight: torch.Tensor
    _matrix: torch.Tensor | None = field(default=None, repr=False)

    def matrix(self, n_out: int, n_rows: int) -> torch.Tensor:
        """The plan as a sparse CSR matrix ``[n_out, n_rows]``: ``matrix @ rows`` sums every message.

        Serving multiplies by it instead of gathering the messages and scattering them back
        (a 2,500-node micro-batch: 0.4 ms instead of 3.1 ms per layer, one thread); built once
        per plan and shared by the layers. Training keeps the gather and scatter (autograd).
        """
        if self._matrix is None or tuple(self._matrix.shape) != (n_out, n_rows):  # built for this shape
            target = self.target.numpy()
            order = stable_order(target)
            crow = np.zeros(n_out + 1, dtype=np.int64)
            np.cumsum(np.bincount(target, minlength=n_out), out=crow[1:])
            self._matrix = sparse_csr(crow, self.source.numpy()[order], self.weight.numpy()[order], (n_out, n_rows))
        return self._matrix


def sparse_csr(crow: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A torch CSR matrix over numpy arrays (no copy)."""
    return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols), torch.from_numpy(values), shape)


with warnings.catch_warnings():
    # torch notes once per process that CSR support is in beta: spend that note here, silenced,
    # rather than enter a warnings filter for every matrix a micro-batch builds.
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    sparse_csr(np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), (1, 1))


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative keys below 2**32, as a radix sort.

    numpy sorts 16-bit keys stably by radix (linear) but 64-bit ones by merge sort, 10x slower
    on a micro-batch's 15,000 messages; two 16-bit passes give the same order.

    >>> stable_order(np.array([70000, 3, 70000, 2, 3])).tolist()
    [3, 1, 4, 0, 2]
    """
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if keys.size and int(keys.max()) >= 1 << 16:
        order = order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]
    return order


def gcn_plan(edge_index: torch.Tensor, edge_weight: torch.Tensor, n_nodes: int) -> GcnPlan:
    """The normalised adjacency of the forward and the backward GCN convolution, once per batch.

    Forward conv (messages ``src → dst``): ``deg = 1 + sum of incoming weights`` and
    ``w / sqrt(deg[src] deg[dst])``, plus a self loop ``1 / deg[i]``; the backward conv is the
    same on the reversed edges (degrees from outgoing weights). As ``gcn_norm`` with
    ``add_self_loops=True`` computes it for each ``GCNConv`` call — the graphs have no self loops.

    >>> p = gcn_plan(torch.tensor([[0], [1]]), torch.tensor([3.0]), 2)
    >>> p.source.tolist(), p.target.tolist(), [round(w, 3) for w in p.weight.tolist()]
    ([0, 3, 0, 2, 1, 3], [1, 0, 0, 1, 0, 1], [1.5, 1.5, 1.0, 0.25, 0.25, 1.0])
    """
    # numpy: a micro-batch's plan is a dozen small array operations, and numpy's per-call cost
    # is a fraction of torch's (the plan holds no gradient: the weights are data, not parameters).
    src, dst = edge_index[0].numpy(), edge_index[1].numpy()
    w = edge_weight.detach().numpy().astype(np.float32, copy=False)
    deg_in = np.bincount(dst, weights=w, minlength=n_nodes).astype(np.float32) + np.float32(1)
    deg_out = np.bincount(src, weights=w, minlength=n_nodes).astype(np.float32) + np.float32(1)
    inv_in, inv_out = 1 / np.sqrt(deg_in), 1 / np.sqrt(deg_out)
    loops = np.arange(n_nodes, dtype=np.int64)
    return GcnPlan(
        source=torch.from_numpy(np.concatenate([2 * src, 2 * dst + 1, 2 * loops, 2 * loops + 1])),
        target=torch.from_numpy(np.concatenate([dst, src, loops, loops])),
        weight=torch.from_numpy(
            np.concatenate([inv_in[src] * w * inv_in[dst], inv_out[dst] * w * inv_out[src], 1 / deg_in, 1 / deg_out])
        ),
    )


class GraphEncoder(nn.Module):
    """Item + action embeddings → L graph layers → SR-GNN-style attention readout.

    The readout attends over all nodes with the latest behaviour as the query and
    a learned recency bias, then mixes the latest node's state with the attended
    summary: ``user = W [h_last ; sum_i alpha_i h_i]``.

    A checkpoint holds one with its item index; :class:`~operators.inference.Embedder`
    is how serving runs it. One forward over a batch of user graphs:

    >>> import torch
    >>> from types import SimpleNamespace as Ev
    >>> from graph_state import GraphConfig, UserGraph
    >>> from operators.checkpoint import Checkpoint
    >>> from operators.tensors import graphs_to_batch
    >>> checkpoint = Checkpoint.seeded(EncoderConfig(dim=16), seed=0)
    >>> g = UserGraph(GraphConfig())
    >>> for n, item in enumerate(["a", "b", "a"]):
    ...     _ = g.apply(Ev(event_id=str(n), item_id=item, action="view", ts=float(n), weight=None))
    >>> batch = graphs_to_batch([g, g], checkpoint.index)  # two users with two distinct items each
    >>> encoder = checkpoint.encoder.eval()
    >>> with torch.inference_mode():
    ...     nodes = encoder.node_states(batch)  # after the L graph layers: one state per node
    ...     users = encoder(batch)  # node states → readout: one vector per user
    >>> tuple(nodes.shape), tuple(users.shape)
    ((4, 16), (2, 16))
    """

    feat_offsets: torch.Tensor
    feat_tokens: torch.Tensor
    global_offsets: torch.Tensor
    global_neighbours: torch.Tensor
    global_weights: torch.Tensor

    def __init__(
        self,
        config: EncoderConfig,
        n_item_rows: int,
        features: FeatureTable | None = None,
        global_view: GlobalView | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.item_emb = nn.Embedding(n_item_rows, d)
        self.action_emb = nn.Embedding(len(config.actions), d)
        self.count_vec = nn.Parameter(torch.zeros(d))
        similarity = config.similarity_k > 0
        self.layers = nn.ModuleList([GraphLayer(d, config.conv, similarity) for _ in range(config.layers)])
        self.dropout = nn.Dropout(config.dropout)
        self.att_last = nn.Linear(d, d, bias=True)
        self.att_node = nn.Linear(d, d, bias=False)
        self.recency_emb = nn.Embedding(RECENCY_BUCKETS, d)
        self.att_q = nn.Linear(d, 1, bias=False)
        self.out = nn.Linear(2 * d, d, bias=False)
        # Side features come last, again so that a model without them initialises as before.
        self.token_emb: nn.Embedding | None = None
        if config.feature_tokens > 0:
            if features is None:
                raise ValueError(E_FEATURE_TABLE.format(tokens=config.feature_tokens))
            self.token_emb = nn.Embedding(config.feature_tokens, d)
            self.register_buffer("feat_offsets", features.offsets.clone())
            self.register_buffer("feat_tokens", features.tokens.clone())
        self.reset_parameters()
        # The global view after every other draw, so the rest of the model initialises as without it.
        self.global_lin: nn.Linear | None = None
        self._global_terms: torch.Tensor | None = None
        if config.global_k > 0:
            if global_view is None:
                raise ValueError(E_GLOBAL_TABLE.format(k=config.global_k))
            self.global_lin = nn.Linear(d, d, bias=False)
            self.register_buffer("global_offsets", global_view.offsets.clone())
            self.register_buffer("global_neighbours", global_view.neighbours.clone())
            self.register_buffer("global_weights", global_view.weights.clone())

    def reset_parameters(self) -> None:
        std = self.config.dim**-0.5
        nn.init.normal_(self.item_emb.weight, std=std)
        nn.init.normal_(self.action_emb.weight, std=std)
        nn.init.zeros_(self.recency_emb.weight)
        if self.token_emb is not None:
            nn.init.normal_(self.token_emb.weight, std=std)

    def feature_table(self) -> FeatureTable | None:
        if self.token_emb is None:
            return None
        return FeatureTable(self.feat_offsets, self.feat_tokens)

    def item_rows_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """Raw item vectors of some rows: the item embedding plus the mean of its feature tokens."""
        items = F.embedding(rows, self.item_emb.weight)
        if self.token_emb is not None:
            starts = self.feat_offsets[rows]
            lengths = self.feat_offsets[rows + 1] - starts
            flat = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
            flat = flat + torch.arange(flat.numel(), dtype=torch.long)
            bag_offsets = torch.cumsum(lengths, 0) - lengths
            items = items + F.embedding_bag(self.feat_tokens[flat], self.token_emb.weight, bag_offsets, mode="mean")
        return items

    def global_view(self) -> GlobalView | None:
        if self.global_lin is None:
            return None
        return GlobalView(self.global_offsets, self.global_neighbours, self.global_weights)

    def set_global_view(self, view: GlobalView) -> None:
        """Replace the view's table (training swaps its out-of-fold blocks for the served view)."""
        self.global_offsets, self.global_neighbours, self.global_weights = view
        self._global_terms = None

    def global_context(self, rows: torch.Tensor) -> torch.Tensor:
        """The global view's term of some rows' inputs: a projection of the weighted mean of their neighbours.

        Neighbour vectors are the raw item vectors (normalised when scores are cosines); a row
        without neighbours gets the projection of zero.
        """
        assert self.global_lin is not None
        # A training batch repeats items across prefixes (long histories: ~40 nodes per graph, a few
        # thousand items): each distinct row once.
        rows, inverse = torch.unique(rows, return_inverse=True)
        starts = self.global_offsets[rows]
        lengths = self.global_offsets[rows + 1] - starts
        total = int(lengths.sum())
        owner = torch.repeat_interleave(torch.arange(rows.numel(), dtype=torch.long), lengths, output_size=total)
        flat = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths, output_size=total)
        flat = flat + torch.arange(total, dtype=torch.long)
        vectors = self.item_rows_vectors(self.global_neighbours[flat])
        if self.config.norm_scale > 0:
            vectors = F.normalize(vectors, dim=-1)
        weighted = vectors * self.global_weights[flat].unsqueeze(-1)
        mixed = torch.zeros((rows.numel(), vectors.shape[1]), dtype=vectors.dtype).index_add_(0, owner, weighted)
        return self.global_lin(mixed)[inverse]

    def global_terms(self, rows: torch.Tensor) -> torch.Tensor:
        """:meth:`global_context` of some rows; when serving, read from a table of every row computed
        once per loaded model (the weights do not change between :meth:`train` calls), so a node
        costs one row lookup, as without the view."""
        if self.training or torch.is_grad_enabled():
            return self.global_context(rows)
        if self._global_terms is None:
            self._global_terms = self.global_context(torch.arange(self.item_emb.num_embeddings))
        return self._global_terms[rows]

    def train(self, mode: bool = True) -> GraphEncoder:
        self._global_terms = None  # training changes the weights it was computed from
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._global_terms = None
        return super().load_state_dict(*args, **kwargs)

    def item_table(self) -> torch.Tensor:
        """Raw vectors of every item row (:meth:`item_rows_vectors` of all rows at once)."""
        if self.token_emb is None:
            return self.item_emb.weight
        bags = F.embedding_bag(self.feat_tokens, self.token_emb.weight, self.feat_offsets[:-1], mode="mean")
        return self.item_emb.weight + bags

    def node_inputs(self, b: GraphBatch, global_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Each node's input from its own fields only (item and its side features, its global
        neighbours when the model has a global view, last action, count).

        ``global_rows``: the view rows the nodes read instead of their item rows (out-of-fold
        training, :class:`operators.global_view.OutOfFoldGraphs`)."""
        return self.inputs_of(b.item_rows, b.actions, b.log_counts, global_rows)

    def inputs_of(
        self,
        item_rows: torch.Tensor,
        actions: torch.Tensor,
        log_counts: torch.Tensor,
        global_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`node_inputs` of nodes given by their columns (the incremental engine's few nodes)."""
        items = self.item_rows_vectors(item_rows)
        if self.config.norm_scale > 0:
            items = F.normalize(items, dim=-1)
        if self.global_lin is not None:
            items = items + (self.global_terms(item_rows) if global_rows is None else self.global_context(global_rows))
        return torch.addcmul(
            items + F.embedding(actions, self.action_emb.weight), log_counts.unsqueeze(-1), self.count_vec
        )

    def similarity_edges(self, b: GraphBatch) -> torch.Tensor | None:
        """Undirected k-nearest-neighbour edges within each user graph (``None`` when switched off).

        Each node links to the ``similarity_k`` other nodes of its graph whose item vectors
        have the highest cosine with its own; the union of both directions is returned, in
        a canonical order. Scores are computed in float64 and rounded to float32 before a
        stable sort, so equal items tie exactly and ties go to the lower slot: the edges are
        a function of the graph alone, whichever batch it is embedded in.
        """
        k = self.config.similarity_k
        if k <= 0:
            return None
        with torch.no_grad():
            vectors = F.normalize(self.item_rows_vectors(b.item_rows).detach().to(torch.float64), dim=-1)
            return knn_edges(vectors, b.ptr, k)

    def gcn_plan(self, b: GraphBatch) -> GcnPlan | None:
        """The batch's GCN adjacency for :meth:`GraphLayer.forward` (``None`` for GAT layers)."""
        if self.config.conv != "gcn":
            return None
        return gcn_plan(b.edge_index, b.edge_weight, int(b.batch.shape[0]))

    def node_states(self, b: GraphBatch, global_rows: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dropout(self.node_inputs(b, global_rows))
        sim = self.similarity_edges(b)
        plan = self.gcn_plan(b)
        for layer in self.layers:
            h = layer(h, b.edge_index, b.edge_weight, sim, plan)
        return h

    def readout(self, h: torch.Tensor, b: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (user vectors [B, d], attention weight of every node [N])."""
        return self.readout_projected(h, self.att_node(h), b)

    def readout_projected(
        self, h: torch.Tensor, projected: torch.Tensor, b: GraphBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`readout` given ``projected = att_node(h)``, the part a node's own state alone decides.

        The incremental engine keeps ``projected`` per node beside its layer outputs, so an event
        that changes a few nodes of a large graph does not project every node again.
        """
        h_last = h[b.last_node]
        if not (self.training or torch.is_grad_enabled()):
            # Serving: one gather from a [graphs x recency buckets] table of query terms, then
            # in-place ops (see _attention), instead of two gathers, two sums and a sigmoid that
            # each allocate.
            gate = (
                self._query_table(h_last)
                .view(-1, self.config.dim)
                .index_select(0, b.batch * RECENCY_BUCKETS + b.recency)
            )
            alpha = self._attention(gate, projected, self.att_q.weight[0])
            summary = torch.zeros(b.num_graphs, self.config.dim).index_add_(0, b.batch, h * alpha.unsqueeze(-1))
            return self._user(h_last, summary), alpha
        gate = torch.sigmoid(self.att_last(h_last)[b.batch] + projected + self.recency_emb(b.recency))
        alpha = self.att_q(gate).squeeze(-1)
        summary = scatter(alpha.unsqueeze(-1) * h, b.batch, dim=0, dim_size=b.num_graphs, reduce="sum")
        return self._user(h_last, self.dropout(summary)), alpha

    def readout_terms(
        self, h: torch.Tensor, recency: torch.Tensor, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(att_node(h) + recency_emb(recency)) / 2`` per node: the part of a node's attention
        input that its own state and recency bucket decide (halved for :meth:`_attention`).
        ``projected``: ``att_node(h)`` when the caller has it already (left unchanged).

        The incremental engine keeps it per node beside the layer outputs and refreshes only the
        rows whose state or bucket changed, so the readout of a large graph per event is one add,
        one ``tanh`` and two matrix-vector products.
        """
        # Functional calls: serving runs this once per micro-batch, where a module call's overhead shows.
        projected = F.linear(h, self.att_node.weight) if projected is None else projected.clone()
        return projected.add_(F.embedding(recency, self.recency_emb.weight)).mul_(0.5)

    def readout_cached(self, h_last: torch.Tensor, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
        """Serving readout of graphs whose node states live in separate arrays (no concatenation).

        ``h_last`` is ``[G, d]``, the newest node's state of each graph; ``parts[g]`` is
        ``(h, terms)`` of graph ``g``: its node states ``[n, d]`` and :meth:`readout_terms` of them,
        as float32 numpy arrays (the engine's per-graph caches).
        Equals :meth:`readout_projected` (to float rounding); used by the incremental engine, whose
        large graphs would otherwise be copied into one batch per event.
        """
        q = self.att_q.weight[0].detach().numpy()
        half_q_sum = np.float32(0.5) * q.sum(dtype=np.float32)
        half = np.float32(0.5)
        longest = max((h.shape[0] for h, _ in parts), default=0)
        gate = np.empty((longest, self.config.dim), dtype=np.float32)  # reused by every graph
        summary = np.empty((len(parts), self.config.dim), dtype=np.float32)
        queries = F.linear(h_last, self.att_last.weight, self.att_last.bias).mul_(0.5).numpy()
        # numpy per graph, not torch: four calls of ~1 µs instead of ~2.5 µs each, and the loop runs
        # once per graph of the batch (~180 of 50 nodes on ml-100k: the engine's largest share).
        for query, row, (h, terms) in zip(queries, summary, parts, strict=True):
            g = gate[: h.shape[0]]
            np.add(terms, query, out=g)
            np.tanh(g, out=g)
            # alpha = (q · tanh + sum(q)) / 2: the sigmoid gate's weight per node
            alpha = np.dot(g, q)
            alpha *= half
            alpha += half_q_sum
            np.dot(alpha, h, out=row)
        return self._user(h_last, torch.from_numpy(summary))

    def _query_table(self, h_last: torch.Tensor) -> torch.Tensor:
        """``[G, RECENCY_BUCKETS, d]``: half of the newest node's attention query plus each recency
        bucket's term (halved for :meth:`_attention`)."""
        return (self.att_last(h_last).unsqueeze(1) + self.recency_emb.weight).mul_(0.5)

    @staticmethod
    def _attention(query: torch.Tensor, projected: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``q · sigmoid(2 * query + projected)`` per row, in place on ``query`` (rows of :meth:`_query_table`;
        ``q`` is ``att_q``'s weight).

        As ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, through :func:`tanh_`: the readout's largest
        elementwise op.
        """
        gate = tanh_(query.add_(projected, alpha=0.5))
        return torch.mv(gate, q).add_(q.sum()).mul_(0.5)

    def _user(self, h_last: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        user = self.out(torch.cat([h_last, summary], dim=-1))
        if self.config.norm_scale > 0:
            user = self.config.norm_scale * F.normalize(user, dim=-1)
        return user

    def forward(self, b: GraphBatch, global_rows: torch.Tensor | None = None) -> torch.Tensor:
        user, _ = self.readout(self.node_states(b, global_rows), b)
        return user

    def item_vectors(self) -> torch.Tensor:
        """Vectors that next-item scores are dot products with (tied to the input table)."""
        if self.config.norm_scale > 0:
            return F.normalize(self.item_table(), dim=-1)
        return self.item_table()


def knn_edges(vectors: torch.Tensor, ptr: torch.Tensor, k: int) -> torch.Tensor:
    """``[2, E]`` undirected top-``k`` cosine edges within each segment ``ptr[i]:ptr[i+1]`` of ``vectors``.

    ``vectors`` must be L2-normalised. Graphs are padded to the largest one, in blocks of
    similar size so the padded score tensor stays bounded.

    >>> v = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64), dim=-1)
    >>> knn_edges(v, torch.tensor([0, 3, 4]), k=1).tolist()
    [[0, 1, 1, 2], [1, 0, 2, 1]]
    """
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    starts = ptr[:-1].tolist()
    parts: list[torch.Tensor] = []
    i = 0
    while i < len(sizes):
        # A block of consecutive graphs whose padded [B, M, M] scores fit the budget.
        j, width = i, 0
        while j < len(sizes) and max(width, sizes[j]) ** 2 * (j - i + 1) <= max(SIMILARITY_BLOCK, sizes[j] ** 2):
            width = max(width, sizes[j])
            j += 1
        parts.append(_knn_block(vectors, starts[i:j], sizes[i:j], width, k))
        i = j
    edges = torch.cat(parts, dim=1) if parts else torch.zeros((2, 0), dtype=torch.long)
    both = torch.cat([edges, edges.flip(0)], dim=1)
    n = int(ptr[-1]) if ptr.numel() else 0
    key = torch.unique(both[0] * max(1, n) + both[1])  # sorted: a canonical order
    return torch.stack([key // max(1, n), key % max(1, n)])


def _knn_block(vectors: torch.Tensor, starts: list[int], sizes: list[int], width: int, k: int) -> torch.Tensor:
    n_graphs = len(sizes)
    kk = min(k, width - 1)
    if kk <= 0:
        return torch.zeros((2, 0), dtype=torch.long)
    size_t = torch.tensor(sizes, dtype=torch.long)
    pos = torch.arange(width, dtype=torch.long)
    valid = pos.unsqueeze(0) < size_t.unsqueeze(1)  # [B, M]
    index = torch.tensor(starts, dtype=torch.long).unsqueeze(1) + pos.unsqueeze(0)  # [B, M]
    index = torch.where(valid, index, torch.zeros_like(index))
    padded = vectors[index] * valid.unsqueeze(-1)  # [B, M, d]
    scores = torch.bmm(padded, padded.transpose(1, 2)).to(torch.float32)
    allowed = valid.unsqueeze(1) & valid.unsqueeze(2) & ~torch.eye(width, dtype=torch.bool).unsqueeze(0)
    scores = scores.masked_fill(~allowed, -torch.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True)
    top_val, top_pos = order.values[..., :kk], order.indices[..., :kk]  # [B, M, kk]
    keep = torch.isfinite(top_val)
    dst = index.unsqueeze(-1).expand(n_graphs, width, kk)
    src = torch.gather(index.unsqueeze(1).expand(n_graphs, width, width), 2, top_pos)
    return torch.stack([src[keep], dst[keep]])
