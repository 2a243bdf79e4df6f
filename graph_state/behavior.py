"""The minimal shape of a behaviour event that a user graph consumes."""

from __future__ import annotations

from typing import Protocol


class Behavior(Protocol):
    """Anything with these attributes can be applied to a :class:`UserGraph`.

    ``stream_app.BehaviorEvent`` satisfies it; so does a plain dataclass in tests.
    """

    @property
    def event_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def weight(self) -> float | None: ...


class UserBehavior(Behavior, Protocol):
    """A behaviour and whose it is: what :func:`graph_state.apply_events` routes to each user's graph."""

    @property
    def user_id(self) -> str: ...
