"""The serving readouts (in place, tanh form; per graph from cached terms) equal the training one."""

from __future__ import annotations

import torch

from operators import Checkpoint
from operators.encoder import EncoderConfig
from operators.tensors import graphs_to_batch
from tests.unit.operators.test_gcn_plan import _graphs


def test_serving_readouts_equal_the_training_readout():
    torch.manual_seed(0)
    ck = Checkpoint.seeded(EncoderConfig(dim=16, layers=1, norm_scale=0.0))
    enc = ck.encoder.eval()
    with torch.no_grad():
        enc.recency_emb.weight.normal_()  # seeded models start at zero: make recency matter
    b = graphs_to_batch(_graphs(5), ck.index)
    with torch.no_grad():
        h = enc.node_states(b)
        projected = enc.att_node(h)
    with torch.enable_grad():  # the training path (autograd-friendly ops)
        want, want_alpha = enc.readout_projected(h, projected, b)
    with torch.inference_mode():
        got, got_alpha = enc.readout_projected(h, projected, b)
        ptr = b.ptr.tolist()
        terms = enc.readout_terms(h, b.recency)
        parts = [(h[ptr[g] : ptr[g + 1]].numpy(), terms[ptr[g] : ptr[g + 1]].numpy()) for g in range(b.num_graphs)]
        per_graph = enc.readout_cached(h[b.last_node], parts)
    assert torch.allclose(want.detach(), got, atol=1e-5)
    assert torch.allclose(want_alpha.detach(), got_alpha, atol=1e-5)
    assert torch.allclose(want.detach(), per_graph, atol=1e-5)
    assert b.recency.unique().numel() > 2  # several recency buckets took part
