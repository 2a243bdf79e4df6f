"""Synthetic behaviour events with planted structure, for demos, tests and benchmarks.

Items are split into interest clusters; inside a cluster every item has a few
preferred successors (a sparse Markov chain). Each user holds one or two
interests and mostly walks the chain of its current interest, sometimes jumps
inside it and rarely anywhere. A model that learns transitions and interests
can therefore predict the next item far better than popularity can.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

ACTION_MIX = (("view", 0.70), ("click", 0.15), ("cart", 0.08), ("purchase", 0.05), ("rate", 0.02))
START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BAD_KINDS = (
    "truncated_json",
    "missing_user",
    "number_user",
    "nan_ts",
    "ancient_ts",
    "oversize_item",
    "negative_weight",
    "not_object",
    "invalid_utf8",
    "empty_item",
)


@dataclass(frozen=True)
class GeneratorSpec:
    users: int = 200
    items: int = 500
    events: int = 10_000
    seed: int = 0
    interests: int = 0
    """Interest clusters; 0 = one per 50 items (at least 2)."""
    malformed: float = 0.0
    """Share of lines that are deliberately invalid."""
    successors: int = 3
    follow: float = 0.75
    """Probability of walking to a preferred successor of the current item."""


def generate_events(spec: GeneratorSpec) -> Iterator[bytes]:
    """Yield JSON lines (without newline). Same spec, same bytes.

    >>> lines = list(generate_events(GeneratorSpec(users=3, items=20, events=5)))
    >>> len(lines), msgspec.json.decode(lines[0])["action"] in dict(ACTION_MIX)
    (5, True)
    """
    rng = random.Random(spec.seed)
    n_interests = spec.interests or max(2, spec.items // 50)
    clusters: list[list[int]] = [[] for _ in range(n_interests)]
    for item in range(spec.items):
        clusters[item % n_interests].append(item)
    cluster_of = {item: c for c, members in enumerate(clusters) for item in members}
    successors = {
        item: rng.sample(clusters[cluster_of[item]], min(spec.successors, len(clusters[cluster_of[item]])))
        for item in range(spec.items)
    }
    interests = [rng.sample(range(n_interests), min(n_interests, rng.choice((1, 2)))) for _ in range(spec.users)]
    current: list[int | None] = [None] * spec.users
    activity = [1.0 / (1 + u) ** 0.5 for u in range(spec.users)]
    actions = [a for a, _ in ACTION_MIX]
    action_p = [p for _, p in ACTION_MIX]
    ts = START_TS
    users = rng.choices(range(spec.users), weights=activity, k=spec.events)
    for n, user in enumerate(users):
        ts += rng.expovariate(1 / 3.0)
        here = current[user]
        draw = rng.random()
        if here is not None and draw < spec.follow:
            item = rng.choice(successors[here])
        elif draw < 0.97:
            item = rng.choice(clusters[rng.choice(interests[user])])
        else:
            item = rng.randrange(spec.items)
        current[user] = item
        action = rng.choices(actions, weights=action_p)[0]
        event = {
            "event_id": f"e{spec.seed}-{n}",
            "user_id": f"u{user}",
            "item_id": f"i{item}",
            "action": action,
            "ts": round(ts, 3),
        }
        if action == "rate":
            event["weight"] = float(rng.randint(1, 5))
        if spec.malformed and rng.random() < spec.malformed:
            yield corrupt(event, rng.choice(BAD_KINDS))
        else:
            yield msgspec.json.encode(event)


def corrupt(event: dict, kind: str) -> bytes:
    """One event (a dict) broken in the way ``kind`` (one of ``BAD_KINDS``) names, as message bytes."""
    bad = dict(event)
    if kind == "truncated_json":
        return msgspec.json.encode(bad)[:-7]
    if kind == "missing_user":
        del bad["user_id"]
    elif kind == "number_user":
        bad["user_id"] = 12345
    elif kind == "nan_ts":
        return msgspec.json.encode(bad).replace(str(bad["ts"]).encode(), b"NaN")
    elif kind == "ancient_ts":
        bad["ts"] = -5.0
    elif kind == "oversize_item":
        bad["item_id"] = "x" * 300
    elif kind == "negative_weight":
        bad["weight"] = -1.0
    elif kind == "not_object":
        return msgspec.json.encode([bad])
    elif kind == "invalid_utf8":
        return msgspec.json.encode(bad).replace(b'"u', b'"\xff\xfeu', 1)
    elif kind == "empty_item":
        bad["item_id"] = ""
    return msgspec.json.encode(bad)


def write_events(spec: GeneratorSpec, path: str) -> int:
    n = 0
    with open(path, "wb") as f:
        for line in generate_events(spec):
            f.write(line + b"\n")
            n += 1
    return n
