"""Message keys: which user a raw message belongs to, before full validation.

The Kafka key of an event is its ``user_id`` (UTF-8). ``ripple produce`` derives
it from the message, and the Faust worker uses it to route a user's state to the
partition its events arrive on. Both need only the ``user_id`` field, so this is
a lenient partial decode: full validation stays in :mod:`stream_app.core.events`.
"""

from __future__ import annotations

import msgspec


class _UserOnly(msgspec.Struct):
    user_id: str


_user_decoder = msgspec.json.Decoder(_UserOnly)


def user_id_of(value: bytes) -> str | None:
    """The ``user_id`` string of a JSON event, or ``None`` when it has none.

    >>> user_id_of(b'{"user_id": "u7", "item_id": "i1"}'), user_id_of(b'{"user_id": 7}'), user_id_of(b"nope")
    ('u7', None, None)
    """
    try:
        return _user_decoder.decode(value).user_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def message_key(value: bytes) -> bytes | None:
    """The Kafka key to produce an event with: its ``user_id`` as UTF-8, else no key."""
    user_id = user_id_of(value)
    return None if user_id is None else user_id.encode("utf-8")


def user_of_message(key: bytes | None, value: bytes) -> str | None:
    """The user a consumed message belongs to: its key when it has one, else its ``user_id``.

    A valid event with a key always has ``user_id == key`` (the pipeline rejects a
    mismatch), so the key is enough and saves parsing.
    """
    if key is not None:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return user_id_of(value)
