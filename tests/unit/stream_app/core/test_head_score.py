"""RIPPLE_HEAD_PATH: the head's score travels beside the embedding, only for the encoder it was trained on."""

from __future__ import annotations

import dataclasses
import logging

import msgspec
import numpy as np
import pytest

from graph_state import MemoryStore
from operators import Checkpoint, Embedder, EncoderConfig
from operators.heads import HeadConfig, TaskSpec
from operators.offline.head_training import LabelledData, train_label_head
from operators.session_knn import KNNConfig, KNNMix, SessionIndex, SessionKNN
from stream_app.core.pipeline import Pipeline
from stream_app.core.records import RawRecord, UserEmbedding
from stream_app.core.settings import Settings
from stream_app.files.file_runner import replay
from stream_app.files.histories import read_histories
from stream_app.kafka.faust_app import build_worker
from tests.conftest import random_stream, to_json, write_jsonl

ENCODER = EncoderConfig(dim=16, hash_buckets=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Events, the seeded encoder as a file, and a (tiny) click head trained on it."""
    root = tmp_path_factory.mktemp("head-score")
    events = write_jsonl(root / "events.jsonl", [to_json(ev) for ev in random_stream(5, 400, n_users=8)])
    model = root / "enc.ckpt"
    checkpoint = Checkpoint.seeded(ENCODER, seed=0)
    checkpoint.save(model)
    histories, _ = read_histories(events, "jsonl", Settings.from_env({}))
    spec = TaskSpec("click", test_share=0.3)
    head = train_label_head(checkpoint, LabelledData.of(histories, spec, None), spec, HeadConfig(hidden=8, epochs=5))
    head.save(root / "head.pt")
    return root, events, str(model), head


def _replay(root, events, model, name, **env):
    settings = Settings.from_env(
        {"RIPPLE_MODEL_PATH": model, **env}, state_dir=str(root / f"state-{name}"), batch_size=50
    )
    out = root / f"{name}.jsonl"
    replay(events, "jsonl", str(out), settings, progress=False)
    return out.read_bytes().splitlines()


@pytest.mark.parametrize("forward", ["on", "off"])
def test_replay_publishes_the_heads_score_of_each_vector(setup, forward):
    """In one process and with the forward process (which then scores and formats the records)."""
    root, events, model, head = setup
    lines = _replay(
        root, events, model, f"with-{forward}", RIPPLE_HEAD_PATH=str(root / "head.pt"), RIPPLE_FORWARD_PROCESS=forward
    )
    records = [msgspec.json.decode(line, type=UserEmbedding) for line in lines]
    vectors = np.asarray([r.embedding for r in records], dtype=np.float32)
    np.testing.assert_allclose([r.head_score for r in records], head.score_many(vectors), atol=1e-6)
    assert {r.head_version for r in records} == {head.head_version}
    plain = _replay(root, events, model, f"without-{forward}", RIPPLE_FORWARD_PROCESS=forward)
    assert b"head_score" not in b"".join(plain) and b"head_version" not in b"".join(plain)
    decoded = [msgspec.json.decode(line, type=UserEmbedding) for line in plain]
    assert [r.embedding for r in decoded] == [r.embedding for r in records]  # the vectors are untouched


def test_a_head_of_another_encoder_is_refused_at_start(setup):
    root, events, _, head = setup
    other = root / "other.ckpt"
    Checkpoint.seeded(ENCODER, seed=1).save(other)
    with pytest.raises(ValueError, match="trained on the embeddings of encoder") as err:
        _replay(root, events, str(other), "refused", RIPPLE_HEAD_PATH=str(root / "head.pt"))
    assert head.encoder_version in str(err.value) and "head.pt" in str(err.value)
    assert not (root / "refused.jsonl").exists() and not (root / "state-refused").exists()
    settings = Settings.from_env(
        {"RIPPLE_MODEL_PATH": str(other), "RIPPLE_HEAD_PATH": str(root / "head.pt")}, state_dir=str(root / "w")
    )
    with pytest.raises(ValueError, match="retrain the head"):
        build_worker(settings)


def test_after_a_live_swap_to_another_encoder_the_score_is_left_out(setup, caplog):
    _, _, model, head = setup
    checkpoint = Checkpoint.load(model)
    pipeline = Pipeline(MemoryStore(Settings.from_env({}).graph_config()), Embedder(checkpoint), head=head)
    first, second = random_stream(1, 2, n_users=1)
    assert pipeline.process([RawRecord(to_json(first), b"u0")]).embeddings[0].head_score is not None
    with caplog.at_level(logging.WARNING, logger="ripple.pipeline"):
        pipeline.swap_model(Embedder(Checkpoint.seeded(ENCODER, seed=2)))
    assert "no head_score" in caplog.text and head.encoder_version in caplog.text
    published = pipeline.process([RawRecord(to_json(second), b"u0")]).embeddings[0]
    assert published.head_score is None and published.head_version is None


def test_a_knn_mix_of_the_encoder_keeps_its_head(setup, caplog):
    # `ripple mix` publishes the same vectors under a new model version: the head still scores them
    root, events, model, head = setup
    plain = Checkpoint.load(model)
    sessions = SessionIndex([["i1", "i2"]], [0.0], plain.index)
    mixed = dataclasses.replace(plain, knn_mix=KNNMix(SessionKNN(sessions, KNNConfig("stan", k=5)), 2.0))
    assert mixed.model_version != plain.model_version and mixed.encoder_version == plain.encoder_version
    head.check_encoder(mixed)
    mixed.save(root / "mixed.ckpt")
    lines = _replay(root, events, str(root / "mixed.ckpt"), "mixed", RIPPLE_HEAD_PATH=str(root / "head.pt"))
    records = [msgspec.json.decode(line, type=UserEmbedding) for line in lines]
    assert {r.model_version for r in records} == {mixed.model_version}
    vectors = np.asarray([r.embedding for r in records], dtype=np.float32)
    np.testing.assert_allclose([r.head_score for r in records], head.score_many(vectors), atol=1e-6)
    pipeline = Pipeline(MemoryStore(Settings.from_env({}).graph_config()), Embedder(plain), head=head)
    with caplog.at_level(logging.WARNING, logger="ripple.pipeline"):
        pipeline.swap_model(Embedder(mixed))
    assert "no head_score" not in caplog.text
    (event,) = random_stream(3, 1, n_users=1)
    assert pipeline.process([RawRecord(to_json(event), b"u0")]).embeddings[0].head_score is not None
