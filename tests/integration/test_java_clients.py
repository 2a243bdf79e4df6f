"""Kafka's own Java console producer and consumer as the worker's clients, with every compression codec.

The generated users are split into five groups; each group's events (file order, key =
``user_id``) are sent by the Java console producer with one compression type: none, gzip,
snappy, lz4, zstd. One worker (producer compression: the default, zstd; embeddings: the
compact ``f32`` encoding) embeds them all. The Java console consumer reads the embeddings
topic back, and every user's final embedding equals the file runner's on the same events.

A raw fetch of the record batches shows the input really holds batches of all five codecs
and the output is zstd-compressed.
"""

from __future__ import annotations

import msgspec
import numpy as np

from bench.worker_process import TopicReader, WorkerProcess, latest_by_user, reached, worker_env
from stream_app.core.embedding_format import decode_embedding
from stream_app.core.keys import message_key
from stream_app.core.settings import Settings
from stream_app.files.generate import GeneratorSpec, generate_events
from stream_app.kafka.kafka_connection import ensure_topics
from tests.conftest import write_jsonl
from tests.integration.expectations import assert_final_embeddings
from tests.integration.kafka_tools import batch_codecs, java_consume, java_produce, require_java
from tests.integration.test_worker_crash import uninterrupted_run

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def test_java_producer_with_every_codec_in_java_consumer_out_equals_the_file_runner(broker, unique, tmp_path):
    require_java()
    lines = list(generate_events(GeneratorSpec(users=40, items=120, events=1500, seed=13)))
    events_path = write_jsonl(tmp_path / "events.jsonl", lines)
    expected, _ = uninterrupted_run(events_path, tmp_path)
    users = sorted(expected)
    codec_of = {user: CODECS[n % len(CODECS)] for n, user in enumerate(users)}

    env = worker_env(broker, unique, tmp_path / "state", embedding_encoding="f32")
    settings = Settings.from_env(env)
    assert settings.producer_compression == "zstd", "the test checks the default producer compression"
    ensure_topics(settings)
    out = TopicReader(broker, settings.output_topic)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        worker.wait_healthy(timeout=90)
        for codec in CODECS:
            records = []
            for line in lines:
                key = message_key(line)
                assert key is not None
                if codec_of[key.decode()] == codec:
                    records.append((key, line))
            java_produce(broker, settings.input_topic, records, codec)
        out.until(reached(expected), timeout=180, what="every user's final embedding")
        # The web view answers in the worker's encoding, or in the one asked for.
        user = users[0]
        compact = worker.get(f"/users/{user}/embedding")
        numbers = worker.get(f"/users/{user}/embedding?encoding=json")
        assert compact[0] == numbers[0] == 200 and worker.get(f"/users/{user}/embedding?encoding=f16")[0] == 400
        assert isinstance(msgspec.json.decode(compact[1])["embedding"], str)
        assert decode_embedding(compact[1]).embedding == decode_embedding(numbers[1]).embedding
        np.testing.assert_allclose(decode_embedding(compact[1]).embedding, expected[user].embedding, atol=1e-5)
    finally:
        assert worker.stop() == 0, worker.log()
        out.close()

    consumed = java_consume(broker, settings.output_topic)
    assert consumed and all(key == msgspec.json.decode(value)["user_id"] for key, value in consumed)
    assert all(isinstance(msgspec.json.decode(value)["embedding"], str) for _, value in consumed)  # f32
    published = [decode_embedding(value) for _, value in consumed]
    latest = latest_by_user(published)
    for codec in CODECS:
        group = {u for u in users if codec_of[u] == codec}
        assert group, codec
        try:
            assert_final_embeddings([e for e in published if e.user_id in group], {u: expected[u] for u in group})
        except AssertionError as exc:
            raise AssertionError(f"users produced with compression {codec}: {exc}") from exc
    assert latest.keys() == expected.keys()

    sent = batch_codecs(broker, settings.input_topic)
    assert set(sent) == set(CODECS), sent
    out_codecs = batch_codecs(broker, settings.output_topic)
    assert out_codecs["zstd"] >= 1 and set(out_codecs) <= {"zstd", "none"}, out_codecs
    print(f"input batches by codec: {dict(sent)}; {len(published)} embeddings read by the Java consumer")
