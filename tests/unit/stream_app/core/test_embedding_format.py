"""Compact embeddings (RIPPLE_EMBEDDING_ENCODING=f32): exact, at most 40 % of today's record, readable everywhere."""

from __future__ import annotations

import base64

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from operators import Checkpoint
from stream_app.core.embedding_format import (
    F32_ENCODING,
    as_json,
    decode_embedding,
    embedding_encoder,
    embedding_record,
    encode_f32,
    readable,
)
from stream_app.core.pipeline import OutputRecords, Published
from stream_app.core.records import DeadLetter, RawRecord, UserEmbedding, json_encoder
from stream_app.core.settings import Settings
from stream_app.files.exports import jsonl_lines
from stream_app.files.file_runner import replay
from stream_app.files.generate import GeneratorSpec, generate_events
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The file runner on the same events with each encoding: (json lines, f32 lines)."""
    tmp = tmp_path_factory.mktemp("encodings")
    events = write_jsonl(tmp / "events.jsonl", list(generate_events(GeneratorSpec(users=30, items=200, events=600))))
    out = {}
    for encoding in ("json", "f32"):
        settings = Settings.from_env({"RIPPLE_EMBEDDING_ENCODING": encoding}, state_dir=str(tmp / encoding))
        replay(events, "jsonl", str(tmp / f"{encoding}.jsonl"), settings, progress=False)
        out[encoding] = (tmp / f"{encoding}.jsonl").read_bytes().splitlines()
    return out["json"], out["f32"]


def test_json_is_todays_record_byte_for_byte(runs):
    json_lines, _ = runs
    for line in json_lines[:50]:
        emb = msgspec.json.decode(line, type=UserEmbedding)
        assert embedding_encoder("json")(emb) == json_encoder.encode(emb) == line
        assert isinstance(msgspec.json.decode(line)["embedding"], list)


def test_f32_carries_exactly_the_same_vectors_and_fields(runs):
    json_lines, f32_lines = runs
    assert len(json_lines) == len(f32_lines) > 50
    for j, f in zip(json_lines, f32_lines, strict=True):
        want = msgspec.json.decode(j, type=UserEmbedding)
        record = msgspec.json.decode(f)
        assert isinstance(record["embedding"], str) and set(record) == set(msgspec.json.decode(j))
        vector = np.frombuffer(base64.b64decode(record["embedding"]), dtype="<f4")
        assert vector.tolist() == want.embedding  # exact: the model computes in float32
        got = decode_embedding(f)
        assert msgspec.structs.replace(got, computed_at=want.computed_at) == want
        assert as_json(f) == json_encoder.encode(got)


def test_f32_records_are_at_most_40_percent_of_json(runs):
    json_lines, f32_lines = runs
    dims = {len(msgspec.json.decode(line, type=UserEmbedding).embedding) for line in json_lines}
    assert dims == {64}
    json_size = sum(map(len, json_lines)) / len(json_lines)
    f32_size = sum(map(len, f32_lines)) / len(f32_lines)
    assert f32_size <= 0.4 * json_size, (f32_size, json_size)
    print(f"mean record: json {json_size:.0f} B, f32 {f32_size:.0f} B ({f32_size / json_size:.0%})")


def test_optional_fields_stay_absent_and_present_ones_survive():
    plain = UserEmbedding("u", [0.25, -1.5], "m", 2, "e2", 10.0, 11.0, 2)
    assert list(embedding_record(plain, "f32")) == list(msgspec.to_builtins(plain))
    scored = msgspec.structs.replace(plain, head_score=0.75, head_version="h1")
    assert decode_embedding(encode_f32(scored)) == scored


def test_unknown_encodings_are_refused_with_the_choices():
    emb = UserEmbedding("u", [1.0], "m", 1, "e", 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="'json' or 'f32'"):
        embedding_encoder("f16")
    with pytest.raises(ValueError, match="embedding_encoding"):
        Settings.from_env({"RIPPLE_EMBEDDING_ENCODING": "msgpack"})
    assert decode_embedding(msgspec.json.encode({**embedding_record(emb, "f32"), "embedding_encoding": F32_ENCODING}))
    other = msgspec.json.encode({**embedding_record(emb, "f32"), "embedding_encoding": "f16le-base64"})
    with pytest.raises(ValueError, match="f16le-base64"):
        decode_embedding(other)


def test_tail_decode_turns_compact_records_into_numbers_and_leaves_anything_else(runs):
    json_lines, f32_lines = runs
    assert readable(f32_lines[0]) == as_json(f32_lines[0])
    assert readable(json_lines[0]) == json_lines[0]
    dead = json_encoder.encode(DeadLetter.of(RawRecord(b"{not json"), "malformed_json", "x"))
    assert readable(dead) == dead
    assert readable(b"not json at all") == b"not json at all"


@settings(max_examples=200, deadline=None)
@given(
    vectors=arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(0, 9)), elements=st.floats(width=32)),
    text=st.lists(st.text(), min_size=10, max_size=10),
    ts=st.floats(allow_nan=False, allow_infinity=False, width=64),
)
def test_the_processs_json_lines_are_the_records_msgspec_writes(vectors, text, ts):
    """``OutputRecords.json_lines`` (orjson over the vectors' rows, the forward process's output) writes
    what msgspec writes for ``make``'s records, byte for byte, or declines (``None``): NaN, infinities and
    numbers from 1e16 (where orjson signs the exponent), strings orjson cannot encode."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("stream_app.core.pipeline.time.time", lambda: 1796148690.4265094)
        same_lines_or_none(vectors, text, ts)


def same_lines_or_none(vectors, text, ts):
    n = len(vectors)
    published = Published(text[:n], list(range(n)), text[5 : 5 + n], [ts] * n, [3] * n)
    output = OutputRecords(Checkpoint.seeded(seed=0), None)
    try:
        expected = jsonl_lines(output.make(published, vectors))
    except UnicodeEncodeError:  # a lone surrogate: neither writes it
        assert output.json_lines(published, vectors) is None
        return
    lines = output.json_lines(published, vectors)
    if lines is None:
        assert not (np.abs(vectors) < 1e16).all() or not abs(ts) < 1e16
    else:
        assert lines == expected


def test_json_lines_decline_what_they_would_write_differently():
    output = OutputRecords(Checkpoint.seeded(seed=0), None)
    published = Published(["u"], [1], ["e"], [1.5], [1])
    assert output.json_lines(published, np.array([[1.0, 2e16]], dtype=np.float32)) is None
    assert output.json_lines(published, np.array([[1.0, np.nan]], dtype=np.float32)) is None
    assert output.json_lines(published, np.array([[1.0, 2.0]], dtype=np.float32)) is not None
    assert output.json_lines(Published(["u\ud800"], [1], ["e"], [1.5], [1]), np.ones((1, 2), np.float32)) is None
