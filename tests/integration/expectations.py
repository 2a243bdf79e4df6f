"""What the integration tests demand of published embeddings, stored state and the online store."""

from __future__ import annotations

import numpy as np

from bench.feed_process import store_content
from bench.worker_process import latest_by_user
from stream_app.core.records import UserEmbedding
from stream_app.kafka.feed import OnlineStore


def assert_final_embeddings(published: list[UserEmbedding], expected: dict[str, UserEmbedding]) -> None:
    """Every user's last published embedding is the uninterrupted (file) run's: version, last event, vector."""
    latest = latest_by_user(published)
    assert latest.keys() == expected.keys()
    for uid, want in expected.items():
        got = latest[uid]
        assert (got.state_version, got.last_event_id) == (want.state_version, want.last_event_id), uid
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5, err_msg=uid)


def assert_republishes_identical(
    published: list[UserEmbedding],
    expected: dict[str, UserEmbedding],
    reference: list[UserEmbedding] | tuple[UserEmbedding, ...] = (),
) -> int:
    """A (user_id, state_version) published twice carries the same vector and last event; returns the repeats.

    No version beyond the user's final one is ever published, and where the uninterrupted run
    (``reference``: every embedding it published) has the same (user_id, state_version), the vectors agree.
    """
    seen: dict[tuple[str, int], UserEmbedding] = {}
    repeats = 0
    for emb in published:
        assert emb.state_version <= expected[emb.user_id].state_version, (emb.user_id, emb.state_version)
        key = (emb.user_id, emb.state_version)
        first = seen.setdefault(key, emb)
        if first is not emb:
            repeats += 1
            assert emb.last_event_id == first.last_event_id, key
            np.testing.assert_allclose(emb.embedding, first.embedding, atol=1e-5, err_msg=str(key))
    for ref in reference:
        if (got := seen.get((ref.user_id, ref.state_version))) is not None:
            np.testing.assert_allclose(got.embedding, ref.embedding, atol=1e-5, err_msg=ref.user_id)
    return repeats


def assert_stored_state(views: dict[str, dict], expected: dict[str, UserEmbedding]) -> None:
    """The workers' table holds every user's uninterrupted-run state (version, last event, nodes, vector)."""
    assert views.keys() == expected.keys()
    for uid, want in expected.items():
        got = views[uid]
        assert (got["state_version"], got["last_event_id"], got["n_nodes"]) == (
            want.state_version,
            want.last_event_id,
            want.n_nodes,
        ), uid
        np.testing.assert_allclose(got["embedding"], want.embedding, atol=1e-5, err_msg=uid)


def expected_store(messages: list[tuple[str, UserEmbedding | None]]) -> dict[str, UserEmbedding]:
    """What the store must hold after ``messages`` in order: per user, the highest state_version since its
    last tombstone (ties: the later record)."""
    latest: dict[str, UserEmbedding] = {}
    for user, emb in messages:
        if emb is None:
            latest.pop(user, None)
        elif user not in latest or emb.state_version >= latest[user].state_version:
            latest[user] = emb
    return latest


def assert_store_equals(store: OnlineStore, expected: dict[str, UserEmbedding]) -> None:
    got = store_content(store)
    assert sorted(got) == sorted(expected), (sorted(set(got) ^ set(expected)))[:10]
    for uid, want in expected.items():
        entry = got[uid]
        assert (entry["state_version"], entry["model_version"], entry["last_event_id"]) == (
            want.state_version,
            want.model_version,
            want.last_event_id,
        ), uid
        assert entry["event_ts"] == want.event_ts and entry["computed_at"] == want.computed_at, uid
        np.testing.assert_array_equal(np.asarray(entry["embedding"], np.float32), np.float32(want.embedding))
