"""How Ripple connects to Kafka: bootstrap servers, credentials, and its topics' creation.

kafka-python clients (``ripple produce``/``tail``, topic checks) and the Faust
worker read the same settings. kafka-python clients get short bootstrap
timeouts so a missing broker is an error within seconds, not a 30 s hang.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from stream_app.core.settings import Settings

CLIENT_TIMEOUTS = {"api_version_auto_timeout_ms": 3000, "request_timeout_ms": 15000}
E_NO_BROKER = (
    "cannot reach the Kafka broker at {servers} ({cause}); start one (bash deploy/kafka/kafka.sh start) "
    "or point RIPPLE_BROKER / --broker at a running broker."
)
E_PARTITIONS = (
    "topic {topic!r} has {found} partitions but RIPPLE_PARTITIONS={want}; the state table must have as many "
    "partitions as the input topic: set RIPPLE_PARTITIONS={found} (or use a new topic)."
)
E_DELETION_PARTITIONS = (
    "deletion topic {topic!r} has {found} partitions but the input topic and the state table have {want}; "
    "deletion requests must be co-partitioned with the events: recreate {topic!r} with {want} partitions "
    "or point RIPPLE_DELETION_TOPIC at a new topic."
)


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://h1:9092;h2:9092`` (Faust style) → ``['h1:9092', 'h2:9092']`` (kafka-python style).

    >>> bootstrap_servers("kafka://127.0.0.1:9092;kafka://10.0.0.2:9093")
    ['127.0.0.1:9092', '10.0.0.2:9093']
    """
    servers = []
    for part in broker.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part.rstrip("/"))
    return servers


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if "SSL" not in settings.kafka_security_protocol:
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return context


def faust_credentials(settings: Settings) -> Any:
    """Faust ``broker_credentials`` for the configured security protocol (``None`` for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        mechanism=settings.kafka_sasl_mechanism or "PLAIN",
        ssl_context=ssl_context(settings),
    )


def client_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by every kafka-python client."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings.broker),
        "security_protocol": settings.kafka_security_protocol,
        **CLIENT_TIMEOUTS,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        # PLAIN when unset, as for the worker (faust_credentials): both kinds of client agree.
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    return config


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create Ripple's topics where missing; check the input and deletion topics' partitions.

    The input and deletion topics get ``settings.partitions`` partitions (the state
    table's): a deletion request must reach the worker that owns the user's table
    partition. The output and dead-letter topics are created alike so that a
    broker's auto-creation (often one partition) never decides. Returns partitions per topic.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

    config = client_config(settings)
    try:
        admin = KafkaAdminClient(**config)
    except NoBrokersAvailable as exc:
        raise RuntimeError(E_NO_BROKER.format(servers=config["bootstrap_servers"], cause=exc)) from exc
    try:
        names = [settings.input_topic, settings.output_topic, settings.dead_letter_topic, settings.deletion_topic]
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor)
            for name in dict.fromkeys(names)
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another client
        partitions: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while True:  # a topic just created has no partitions, then no leaders, for a moment
            described = admin.describe_topics(list(dict.fromkeys(names)))
            partitions = {meta["topic"]: len(meta["partitions"]) for meta in described}
            led = all(part.get("leader", -1) >= 0 for meta in described for part in meta["partitions"])
            if (led and all(partitions.get(n) for n in names)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    except KafkaError as exc:
        raise RuntimeError(E_NO_BROKER.format(servers=config["bootstrap_servers"], cause=exc)) from exc
    finally:
        admin.close()
    found = partitions.get(settings.input_topic, settings.partitions)
    if found != settings.partitions:
        raise ValueError(E_PARTITIONS.format(topic=settings.input_topic, found=found, want=settings.partitions))
    found = partitions.get(settings.deletion_topic, settings.partitions)
    if found != settings.partitions:
        raise ValueError(
            E_DELETION_PARTITIONS.format(topic=settings.deletion_topic, found=found, want=settings.partitions)
        )
    return partitions
