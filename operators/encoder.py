"""The graph encoder: GCN message passing over a user graph, then an attention readout."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import scatter

from graph_state import DEFAULT_ACTIONS
from operators.tensors import RECENCY_BUCKETS, GraphBatch

CONVS = ("gcn", "gat")
E_CONV = "unknown conv {value!r}; choose one of {choices}."
E_SCALE = "norm_scale must be in [0, 1000] and dropout in [0, 1) (got norm_scale={scale}, dropout={dropout})."
E_DIM = "dim must be between 4 and 1024 and layers between 1 and 8 (got dim={dim}, layers={layers})."


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

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(E_CONV.format(value=self.conv, choices=CONVS))
        if not (4 <= self.dim <= 1024 and 1 <= self.layers <= 8):
            raise ValueError(E_DIM.format(dim=self.dim, layers=self.layers))
        if not (0.0 <= self.norm_scale <= 1000.0 and 0.0 <= self.dropout < 1.0):
            raise ValueError(E_SCALE.format(scale=self.norm_scale, dropout=self.dropout))
        object.__setattr__(self, "actions", tuple(self.actions))

    def to_dict(self) -> dict:
        return asdict(self)


class GraphLayer(nn.Module):
    """One round of message passing along transitions in both directions, with a residual.

    Forward and backward edges get their own convolution (as SR-GNN's in/out
    adjacency), so "what led here" and "what came next" stay distinguishable.
    """

    def __init__(self, dim: int, conv: str) -> None:
        super().__init__()
        if conv == "gcn":
            self.fwd: nn.Module = GCNConv(dim, dim, add_self_loops=True, normalize=True)
            self.bwd: nn.Module = GCNConv(dim, dim, add_self_loops=True, normalize=True)
        else:
            self.fwd = GATConv(dim, dim, heads=1, edge_dim=1, add_self_loops=True, fill_value=1.0)
            self.bwd = GATConv(dim, dim, heads=1, edge_dim=1, add_self_loops=True, fill_value=1.0)
        self.conv = conv
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor) -> torch.Tensor:
        rev = edge_index.flip(0)
        if self.conv == "gcn":
            m = self.fwd(h, edge_index, edge_weight) + self.bwd(h, rev, edge_weight)
        else:
            attr = edge_weight.unsqueeze(-1)
            m = self.fwd(h, edge_index, attr) + self.bwd(h, rev, attr)
        return self.norm(h + torch.relu(m))


class GraphEncoder(nn.Module):
    """Item + action embeddings → L graph layers → SR-GNN-style attention readout.

    The readout attends over all nodes with the latest behaviour as the query and
    a learned recency bias, then mixes the latest node's state with the attended
    summary: ``user = W [h_last ; sum_i alpha_i h_i]``.
    """

    def __init__(self, config: EncoderConfig, n_item_rows: int) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.item_emb = nn.Embedding(n_item_rows, d)
        self.action_emb = nn.Embedding(len(config.actions), d)
        self.count_vec = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList([GraphLayer(d, config.conv) for _ in range(config.layers)])
        self.dropout = nn.Dropout(config.dropout)
        self.att_last = nn.Linear(d, d, bias=True)
        self.att_node = nn.Linear(d, d, bias=False)
        self.recency_emb = nn.Embedding(RECENCY_BUCKETS, d)
        self.att_q = nn.Linear(d, 1, bias=False)
        self.out = nn.Linear(2 * d, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.dim**-0.5
        nn.init.normal_(self.item_emb.weight, std=std)
        nn.init.normal_(self.action_emb.weight, std=std)
        nn.init.zeros_(self.recency_emb.weight)

    def node_inputs(self, b: GraphBatch) -> torch.Tensor:
        """Each node's input from its own fields only (item, last action, count)."""
        items = self.item_emb(b.item_rows)
        if self.config.norm_scale > 0:
            items = F.normalize(items, dim=-1)
        return items + self.action_emb(b.actions) + b.log_counts.unsqueeze(-1) * self.count_vec

    def node_states(self, b: GraphBatch) -> torch.Tensor:
        h = self.dropout(self.node_inputs(b))
        for layer in self.layers:
            h = layer(h, b.edge_index, b.edge_weight)
        return h

    def readout(self, h: torch.Tensor, b: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (user vectors [B, d], attention weight of every node [N])."""
        h_last = h[b.last_node]
        gate = torch.sigmoid(self.att_last(h_last)[b.batch] + self.att_node(h) + self.recency_emb(b.recency))
        alpha = self.att_q(gate).squeeze(-1)
        summary = scatter(alpha.unsqueeze(-1) * h, b.batch, dim=0, dim_size=b.num_graphs, reduce="sum")
        user = self.out(torch.cat([h_last, self.dropout(summary)], dim=-1))
        if self.config.norm_scale > 0:
            user = self.config.norm_scale * F.normalize(user, dim=-1)
        return user, alpha

    def forward(self, b: GraphBatch) -> torch.Tensor:
        user, _ = self.readout(self.node_states(b), b)
        return user

    def item_vectors(self) -> torch.Tensor:
        """Vectors that next-item scores are dot products with (tied to the input table)."""
        if self.config.norm_scale > 0:
            return F.normalize(self.item_emb.weight, dim=-1)
        return self.item_emb.weight
