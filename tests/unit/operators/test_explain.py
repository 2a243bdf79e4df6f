"""Explanations: additive shares that rebuild the vector and point at the behaviours that matter."""

from __future__ import annotations

import numpy as np
import torch

from graph_state import GraphConfig, UserGraph
from operators import Checkpoint, Embedder, EncoderConfig
from operators.explain import explain, node_contributions
from stream_app.core.events import decode_event
from stream_app.files.generate import GeneratorSpec, generate_events

CKPT = Checkpoint.seeded(EncoderConfig(dim=32), seed=4)


def histories(n_users: int = 40) -> dict[str, list]:
    users: dict[str, list] = {}
    for line in generate_events(GeneratorSpec(users=n_users, items=300, events=2500, seed=2)):
        ev = decode_event(line)
        users.setdefault(ev.user_id, []).append(ev)
    return {u: evs for u, evs in users.items() if len({e.item_id for e in evs}) >= 6}


def build(events) -> UserGraph:
    g = UserGraph(GraphConfig())
    for ev in events:
        g.apply(ev)
    return g


def test_contributions_add_up_to_the_embedded_vector_and_shares_to_one():
    for events in list(histories().values())[:10]:
        g = build(events)
        contributions, _, user = node_contributions(CKPT, g)
        np.testing.assert_allclose(contributions.sum(0).numpy(), Embedder(CKPT).embed_one(g), atol=1e-5)
        assert abs(sum(p.share for p in explain(CKPT, g)) - 1.0) < 1e-4
        assert torch.allclose(user, contributions.sum(0))


def test_removing_the_top_behaviour_moves_the_vector_more_than_removing_the_lowest():
    embedder = Embedder(CKPT)
    top_moves, low_moves = [], []
    for events in histories().values():
        g = build(events)
        base = embedder.embed_one(g)
        parts = explain(CKPT, g)
        for item, moves in ((parts[0].item_id, top_moves), (parts[-1].item_id, low_moves)):
            rest = [e for e in events if e.item_id != item]
            moves.append(float(np.linalg.norm(embedder.embed_one(build(rest)) - base)))
    assert len(top_moves) >= 20
    assert np.mean(top_moves) > np.mean(low_moves)
