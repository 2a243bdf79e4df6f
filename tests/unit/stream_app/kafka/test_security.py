"""Security settings (issue 6): Kafka SASL/SSL options reach every client, the web server binds
to loopback by default, secrets stay out of reprs. No broker: clients are built, never started.

The size limit before parsing and "no payload in logs" are proven against the real worker in
tests/integration/test_hostile_input.py (and the 10 MB case in test_fuzz.py).
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream_app.core.settings import Settings
from stream_app.kafka import produce as kafka_cli
from stream_app.kafka.faust_app import build_app
from stream_app.kafka.kafka_connection import client_config, ensure_topics

SECRET = "s3cr3t-pa55"


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate and key (openssl), used both as client certificate and CA."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "client.pem", d / "client.key"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ripple-test",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return str(cert), str(key)


def secure(tmp_path: Path, protocol: str, cert: tuple[str, str] | None = None, **extra: Any) -> Settings:
    env = {
        "RIPPLE_STATE_DIR": str(tmp_path / "state"),
        "RIPPLE_KAFKA_SECURITY_PROTOCOL": protocol,
        "RIPPLE_KAFKA_SASL_USERNAME": "ripple-svc",
        "RIPPLE_KAFKA_SASL_PASSWORD": SECRET,
    }
    if cert is not None:
        env |= {
            "RIPPLE_KAFKA_SSL_CAFILE": cert[0],
            "RIPPLE_KAFKA_SSL_CERTFILE": cert[0],
            "RIPPLE_KAFKA_SSL_KEYFILE": cert[1],
        }
    env |= {f"RIPPLE_{k.upper()}": v for k, v in extra.items()}
    return Settings.from_env(env)


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """What Faust hands aiokafka's producer, consumer and admin client for this worker's settings."""
    app = build_app(settings)
    return dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))


def trusts(context: ssl.SSLContext, cert: str) -> bool:
    with open(cert) as f:
        pem = f.read()
    der = ssl.PEM_cert_to_DER_cert(pem)
    return any(c == der for c in context.get_ca_certs(binary_form=True))


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", ""), ("SASL_PLAINTEXT", "PLAIN")],
)
def test_sasl_settings_reach_the_worker_and_the_cli_clients(tmp_path, client_cert, protocol, mechanism):
    cert = client_cert if protocol == "SASL_SSL" else None
    settings = secure(tmp_path, protocol, cert, kafka_sasl_mechanism=mechanism)
    worker = aiokafka_auth(settings)
    cli = client_config(settings)
    for config in (worker, cli):
        assert config["security_protocol"] == protocol
        assert config["sasl_mechanism"] == (mechanism or "PLAIN")  # one default for both kinds of client
        assert config["sasl_plain_username"] == "ripple-svc" and config["sasl_plain_password"] == SECRET
        if protocol == "SASL_SSL":
            assert isinstance(config["ssl_context"], ssl.SSLContext) and trusts(config["ssl_context"], cert[0])
        else:
            assert config.get("ssl_context") is None


def test_ssl_settings_reach_the_worker_and_the_cli_clients(tmp_path, client_cert):
    settings = secure(tmp_path, "SSL", client_cert)
    for config in (aiokafka_auth(settings), client_config(settings)):
        assert config["security_protocol"] == "SSL"
        context = config["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert trusts(context, client_cert[0])
        assert "sasl_mechanism" not in config


def test_plaintext_is_the_default_and_sends_no_credentials(tmp_path):
    settings = Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path)})
    assert aiokafka_auth(settings) == {"security_protocol": "PLAINTEXT"}
    config = client_config(settings)
    assert config["security_protocol"] == "PLAINTEXT" and "sasl_plain_password" not in config


def test_every_kafka_python_client_gets_the_security_settings(tmp_path, client_cert, monkeypatch):
    """ripple produce, forget, tail and the topic check build their clients with the settings' security."""
    import kafka
    import kafka.admin

    seen: dict[str, dict[str, Any]] = {}

    class Built(Exception):
        pass

    def recorder(name: str):
        def build(*args: Any, **kwargs: Any) -> Any:
            seen[name] = kwargs
            raise Built(name)

        return build

    monkeypatch.setattr(kafka, "KafkaProducer", recorder("producer"))
    monkeypatch.setattr(kafka, "KafkaConsumer", recorder("consumer"))
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", recorder("admin"))
    monkeypatch.setattr("stream_app.kafka.kafka_connection.ensure_topics", lambda settings: {})
    settings = secure(tmp_path, "SASL_SSL", client_cert, kafka_sasl_mechanism="SCRAM-SHA-512")
    events = tmp_path / "e.jsonl"
    events.write_text('{"user_id": "u"}\n')
    checks = {
        "producer": lambda: kafka_cli.produce_events(str(events), "jsonl", settings, progress=False),
        "deletions": lambda: kafka_cli.produce_deletions(["u"], settings),
        "admin": lambda: ensure_topics(settings),
    }
    for name, call in checks.items():
        with pytest.raises(Built):
            call()
        config = seen.pop("admin" if name == "admin" else "producer")
        assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512", name
        assert config["sasl_plain_password"] == SECRET and trusts(config["ssl_context"], client_cert[0]), name

    from typer.testing import CliRunner

    from stream_app.cli import app as cli_app

    env = {
        "RIPPLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RIPPLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RIPPLE_KAFKA_SASL_USERNAME": "ripple-svc",
        "RIPPLE_KAFKA_SASL_PASSWORD": SECRET,
        "RIPPLE_KAFKA_SSL_CAFILE": client_cert[0],
    }
    result = CliRunner().invoke(cli_app, ["tail", "--max", "1"], env=env)
    assert isinstance(result.exception, Built), result.output
    config = seen["consumer"]
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(
    ("name", "value"),
    [("RIPPLE_KAFKA_SECURITY_PROTOCOL", "SASL-SSL"), ("RIPPLE_KAFKA_SECURITY_PROTOCOL", "ssl"),
     ("RIPPLE_KAFKA_SASL_MECHANISM", "GSSAPI")],
)  # fmt: skip
def test_a_misspelt_security_setting_stops_the_start(name, value):
    # Faust would read "SASL-SSL" as SASL with TLS while kafka-python refuses it: refuse it first.
    with pytest.raises(ValueError, match=name.removeprefix("RIPPLE_").lower()):
        Settings.from_env({name: value})


def test_the_password_stays_out_of_the_settings_repr(tmp_path):
    settings = secure(tmp_path, "SASL_PLAINTEXT")
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "ripple-svc" in repr(settings)


def test_web_server_binds_loopback_unless_configured(tmp_path):
    default = build_app(Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path)}))
    assert default.conf.web_bind == "127.0.0.1" and Settings().web_host == "127.0.0.1"
    # /metrics is a page of the same web server: it has no listener of its own.
    exposed = build_app(Settings.from_env({"RIPPLE_STATE_DIR": str(tmp_path), "RIPPLE_WEB_HOST": "0.0.0.0"}))
    assert exposed.conf.web_bind == "0.0.0.0"
