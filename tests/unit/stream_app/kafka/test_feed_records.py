"""The feed's pieces that need no Redis or broker: decoding topic records, the script's arguments, logs, imports."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np

from stream_app.core.records import Recommended, UserEmbedding, json_encoder
from stream_app.kafka.feed import decode_record, redact, script_args

EMB = UserEmbedding("u1", [0.5, -1.25, 3.0], "m1", 7, "e7", 1_767_225_600.5, 1_767_225_601.25, 3)


def test_topic_records_decode_to_records_tombstones_or_nothing():
    assert decode_record(b"u1", json_encoder.encode(EMB)) == ("u1", EMB)
    assert decode_record(b"u1", None) == ("u1", None)  # ripple forget
    for key, value in ((None, None), (b"", None), (b"\xff", None), (b"u1", b"{not json"), (b"u1", b'{"a": 1}')):
        assert decode_record(key, value) is None


def test_script_arguments_carry_the_fields_and_the_float32_vector():
    with_recs = msgspec.structs.replace(EMB, recommendations=[Recommended("i1", 2.5)])
    packed, vector = script_args(with_recs)
    fields = msgspec.msgpack.decode(packed)
    assert fields[0] == 7  # compared by the script
    assert dict(zip(fields[1::2], fields[2::2], strict=True)) == {
        "model_version": "m1",
        "state_version": "7",
        "event_ts": "1767225600.5",
        "computed_at": "1767225601.25",
        "last_event_id": "e7",
        "recommendations": '[{"item_id":"i1","score":2.5}]',
    }
    np.testing.assert_array_equal(np.frombuffer(vector, "<f4"), np.float32(EMB.embedding))
    assert "recommendations" not in msgspec.msgpack.decode(script_args(EMB)[0])


def test_passwords_stay_out_of_logs():
    assert redact("redis://user:s3cret@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert "s3cret" not in redact("rediss://:s3cret@cache:6380")


def test_the_feed_and_the_light_commands_never_import_torch():
    """`ripple feed` runs as its own Deployment: torch would cost it ~800 MiB and 5 s per start."""
    code = "import sys, stream_app.cli, stream_app.kafka.feed; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
