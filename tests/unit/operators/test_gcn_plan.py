"""The batch-wide GCN adjacency (``gcn_plan``) computes what PyG's two ``GCNConv`` calls compute."""

from __future__ import annotations

import random

import torch

from graph_state import GraphConfig, UserGraph
from operators import Checkpoint
from operators.encoder import EncoderConfig
from operators.tensors import graphs_to_batch
from tests.conftest import BASE_TS, Ev


def _graphs(seed: int) -> list[UserGraph]:
    rng = random.Random(seed)
    graphs = []
    for u in range(12):
        g = UserGraph(GraphConfig(max_nodes=30))
        for n in range(rng.randint(1, 90)):
            action = rng.choice(["view", "cart", "purchase"])
            g.apply(Ev(f"{u}-{n}", f"i{rng.randint(0, 50)}", action, BASE_TS + 37 * n, rng.choice([None, 0.5])))
        graphs.append(g)
    return graphs


def test_plan_equals_pyg_gcnconv_forward_and_gradients():
    ck = Checkpoint.seeded(EncoderConfig(dim=16, layers=2))
    enc = ck.encoder
    b = graphs_to_batch(_graphs(3), ck.index)
    plan = enc.gcn_plan(b)
    assert plan is not None
    h0 = enc.node_inputs(b).detach()
    outs = []
    for p in (None, plan):
        enc.zero_grad()
        h = h0.clone().requires_grad_(True)
        x = h
        for layer in enc.layers:
            x = layer(x, b.edge_index, b.edge_weight, None, p)
        x.square().sum().backward()
        outs.append((x.detach(), h.grad.clone(), enc.layers[0].fwd.lin.weight.grad.clone()))
    (pyg_out, pyg_dh, pyg_dw), (fused_out, fused_dh, fused_dw) = outs
    assert torch.allclose(pyg_out, fused_out, atol=1e-5)
    assert torch.allclose(pyg_dh, fused_dh, atol=1e-4)
    assert torch.allclose(pyg_dw, fused_dw, atol=1e-4)
    assert not torch.allclose(pyg_out, h0, atol=1e-3)  # the layers did something


def test_gat_layers_have_no_plan():
    ck = Checkpoint.seeded(EncoderConfig(dim=8, layers=1, conv="gat"))
    assert ck.encoder.gcn_plan(graphs_to_batch(_graphs(1)[:2], ck.index)) is None


def test_serving_multiplies_by_the_plan_matrix_with_the_same_result(monkeypatch):
    """Without autograd the layers multiply by the plan as a sparse matrix (no gather/scatter)."""
    monkeypatch.setattr("operators.encoder.MATRIX_MIN_MESSAGES", 0)  # a small test batch takes it too
    ck = Checkpoint.seeded(EncoderConfig(dim=16, layers=2))
    enc = ck.encoder
    b = graphs_to_batch(_graphs(4), ck.index)
    plan = enc.gcn_plan(b)
    assert plan is not None
    with torch.inference_mode():
        h0 = enc.node_inputs(b)
        outs = []
        for p in (None, plan):
            x = h0
            for layer in enc.layers:
                x = layer(x, b.edge_index, b.edge_weight, None, p)
            outs.append(x)
    assert plan._matrix is not None and plan._matrix.layout == torch.sparse_csr
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
