"""Deleting users from an embedded (``ripple replay``) state directory: ``ripple forget --state``."""

from __future__ import annotations

import os

from graph_state import RocksStore
from stream_app.core.pipeline import forget_users
from stream_app.core.settings import Settings

E_NOT_EMBEDDED_STATE = (
    "{path} is not a state directory of `ripple replay` (no RocksDB there){hint}; pass the --state of the replay "
    "whose users to delete, or leave --state out to send the request to the worker's deletion topic."
)
E_WORKER_STATE = ": it looks like a Faust worker's state, which only the worker itself may change"


def forget_local(user_ids: list[str], settings: Settings) -> dict[str, bool]:
    """Delete users from an embedded (``ripple replay``) state directory; user → whether it had state."""
    path = settings.state_dir
    if not os.path.isfile(os.path.join(path, "CURRENT")):
        worker_like = os.path.isdir(path) and any(
            os.path.isdir(os.path.join(path, name, "v1", "tables")) for name in os.listdir(path)
        )
        raise ValueError(E_NOT_EMBEDDED_STATE.format(path=path, hint=E_WORKER_STATE if worker_like else ""))
    store = RocksStore(path, settings.graph_config(), settings.rocks_options())
    try:
        return forget_users(store, user_ids)
    finally:
        store.close()
