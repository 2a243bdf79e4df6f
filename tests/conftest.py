"""Fixtures shared by all tests: small event streams built in code."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
import pytest

from stream_app.core.records import UserEmbedding

BASE_TS = 1_767_225_600.0


@dataclass(frozen=True)
class Ev:
    """A minimal behaviour (satisfies graph_state.Behavior)."""

    event_id: str
    item_id: str
    action: str = "view"
    ts: float = BASE_TS
    weight: float | None = None
    user_id: str = "u0"


def random_stream(seed: int, n_events: int, n_users: int = 5, n_items: int = 30) -> list[Ev]:
    rng = random.Random(seed)
    actions = ["view", "click", "cart", "purchase", "rate", "teleport"]
    ts = BASE_TS
    out = []
    for n in range(n_events):
        ts += rng.uniform(0, 600)
        out.append(
            Ev(
                event_id=f"e{seed}-{n}",
                user_id=f"u{rng.randrange(n_users)}",
                item_id=f"i{rng.randrange(n_items)}",
                action=rng.choice(actions),
                ts=round(ts, 3),
                weight=rng.choice([None, 0.5, 2.0]),
            )
        )
    return out


def to_json(ev: Ev) -> bytes:
    obj = {"event_id": ev.event_id, "user_id": ev.user_id, "item_id": ev.item_id, "action": ev.action, "ts": ev.ts}
    if ev.weight is not None:
        obj["weight"] = ev.weight
    return msgspec.json.encode(obj)


def write_jsonl(path, lines: list[bytes]) -> str:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line + b"\n")
    return str(path)


def read_latest(path) -> dict[str, UserEmbedding]:
    """The last embedding of every user in a JSON-lines file of embeddings (what ``ripple replay`` writes)."""
    latest: dict[str, UserEmbedding] = {}
    with open(path, "rb") as f:
        for line in f:
            emb = msgspec.json.decode(line, type=UserEmbedding)
            latest[emb.user_id] = emb
    return latest


@pytest.fixture
def stream_factory():
    return random_stream
