from __future__ import annotations

import msgspec
import pytest

from stream_app.core import events as E
from stream_app.core.events import BehaviorEvent, EventLimits, Rejection, decode_event

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view", "ts": 1_767_225_600}


def enc(**changes) -> bytes:
    obj = {**GOOD, **changes}
    return msgspec.json.encode({k: v for k, v in obj.items() if v is not ...})


def test_good_event_and_iso_timestamp():
    ev = decode_event(enc(ts="2026-01-01T00:00:00Z", weight=2))
    assert isinstance(ev, BehaviorEvent) and ev.ts == 1_767_225_600.0 and ev.weight == 2.0
    naive = decode_event(enc(ts="2026-01-01T00:00:00"))
    assert isinstance(naive, BehaviorEvent) and naive.ts == ev.ts


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event_id": "e1", ', E.MALFORMED_JSON),
        (b"[1, 2]", E.NOT_AN_OBJECT),
        (b"\xff\xfe{}", E.INVALID_UTF8),
        (enc(user_id=...), E.MISSING_FIELD),
        (enc(user_id=None), E.MISSING_FIELD),
        (enc(user_id=7), E.WRONG_TYPE),
        (enc(ts=True), E.WRONG_TYPE),
        (enc(weight="heavy"), E.WRONG_TYPE),
        (enc(item_id=""), E.EMPTY_FIELD),
        (enc(item_id="x" * 257), E.OVERSIZE_FIELD),
        (enc(event_id="é" * 65), E.OVERSIZE_FIELD),
        (enc(ts=12345).replace(b"12345", b"1e400"), E.NON_FINITE),
        (enc(weight=12345).replace(b"12345", b"-1e400"), E.NON_FINITE),
        (enc(ts=-1), E.TIMESTAMP_OUT_OF_RANGE),
        (enc(ts=9e12), E.TIMESTAMP_OUT_OF_RANGE),
        (enc(ts="yesterday"), E.BAD_TIMESTAMP),
        (enc(weight=-0.5), E.NEGATIVE_WEIGHT),
        (enc(features=[1]), E.BAD_FEATURES),
        (enc(features={f"k{i}": i for i in range(40)}), E.BAD_FEATURES),
        (b"{" + b" " * 70_000 + b"}", E.OVERSIZE_MESSAGE),
    ],
)
def test_rejections_name_their_reason(raw, reason):
    result = decode_event(raw)
    assert isinstance(result, Rejection), result
    assert result.reason == reason and result.reason in E.REJECTION_REASONS
    assert result.detail


def test_key_must_match_user_id():
    assert isinstance(decode_event(enc(), key=b"u1"), BehaviorEvent)
    assert decode_event(enc(), key=b"u2").reason == E.KEY_MISMATCH
    assert decode_event(enc(), key=b"").reason == E.KEY_MISMATCH


def test_unknown_action_policy():
    assert decode_event(enc(action="teleport")).action == "teleport"  # mapped to 'other' by the graph
    assert decode_event(enc(action="teleport"), limits=EventLimits(unknown_action="reject")).reason == E.UNKNOWN_ACTION


def test_oversize_message_is_rejected_before_parsing():
    limits = EventLimits(max_message_bytes=300)
    assert decode_event(b"x" * 301, limits=limits).reason == E.OVERSIZE_MESSAGE
