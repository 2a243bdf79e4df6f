"""Kafka's own Java clients (console producer and consumer, from the jars deploy/kafka/kafka.sh resolves)
and a raw look at a topic's record batches (which codec each was written with)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.protocol.fetch import FetchRequest
from kafka.record import MemoryRecords

from bench.worker_process import ROOT
from stream_app.kafka.compression import codec_name

KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
CONSOLE_PRODUCER = "kafka.tools.ConsoleProducer"  # Kafka 3.9; org.apache.kafka.tools.ConsoleProducer from 4.0
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"


def require_java() -> None:
    """Skip (fail under CI) when the Java clients cannot run here: no java, or no jars and no maven."""
    libs = os.environ.get("RIPPLE_KAFKA_LIBS", os.path.expanduser("~/.cache/ripple/kafka-3.9-libs"))
    missing = None
    if shutil.which(os.environ.get("JAVA", "java")) is None:
        missing = "java is not installed"
    elif not os.path.isdir(libs) and shutil.which(os.environ.get("MVN", "mvn")) is None:
        missing = f"no Kafka jars in {libs} and no maven to fetch them"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Kafka's Java clients cannot run: {missing}")
        pytest.skip(f"Kafka's Java clients cannot run: {missing}")


def kafka_tool(cls: str, *args: str, stdin: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(KAFKA_SH), "tool", cls, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def java_produce(broker: str, topic: str, records: list[tuple[bytes, bytes]], compression: str) -> None:
    """Kafka's console producer sends ``(key, value)`` lines with ``compression.type=compression``."""
    lines = b"".join(key + b"\t" + value + b"\n" for key, value in records)
    assert all(b"\t" not in k and b"\n" not in v for k, v in records)
    done = kafka_tool(
        CONSOLE_PRODUCER,
        "--bootstrap-server", broker,
        "--topic", topic,
        "--compression-codec", compression,
        "--property", "parse.key=true",
        "--property", "key.separator=\t",
        "--producer-property", "acks=all",
        "--producer-property", "linger.ms=50",
        stdin=lines,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


def java_consume(broker: str, topic: str, idle_ms: int = 8000) -> list[tuple[str, str]]:
    """Kafka's console consumer reads ``topic`` from the beginning until ``idle_ms`` pass without a message."""
    done = kafka_tool(
        CONSOLE_CONSUMER,
        "--bootstrap-server", broker,
        "--topic", topic,
        "--from-beginning",
        "--property", "print.key=true",
        "--property", "key.separator=\t",
        "--timeout-ms", str(idle_ms),
    )  # fmt: skip
    err = done.stderr.decode(errors="replace")
    # --timeout-ms ends the consumer with a TimeoutException and exit status 1 once it is idle.
    assert "Processed a total of" in err, err[-3000:]
    pairs = []
    for line in done.stdout.decode().splitlines():
        if line:
            key, value = line.split("\t", 1)
            pairs.append((key, value))
    return pairs


def batch_codecs(broker: str, topic: str) -> Counter[str]:
    """How many record batches of each codec the topic holds (a raw Fetch, nothing decompressed)."""
    consumer = KafkaConsumer(bootstrap_servers=broker, api_version_auto_timeout_ms=5000)
    try:
        client = consumer._client
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assert partitions, f"topic {topic} does not exist"
        codecs: Counter[str] = Counter()
        for partition in partitions:
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            offset = 0
            while True:
                deadline = time.monotonic() + 15
                while not client.ready(node):
                    assert time.monotonic() < deadline, f"broker {node} not ready"
                    client.poll(timeout_ms=100)
                request = FetchRequest[4](-1, 100, 1, 8 << 20, 0, [(topic, [(partition, offset, 8 << 20)])])
                future = client.send(node, request)
                client.poll(future=future, timeout_ms=10_000)
                assert future.succeeded(), future.exception
                ((_, (part,)),) = future.value.topics
                records = MemoryRecords(part[-1])
                fetched = False
                while records.has_next():
                    batch = records.next_batch()
                    codecs[codec_name(batch.compression_type)] += 1
                    offset = batch.next_offset
                    fetched = True
                if not fetched:
                    break
        return codecs
    finally:
        consumer.close()
