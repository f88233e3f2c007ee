"""The MQTT broker the sorter link talks to: its URL (GRADER_MQTT_URL) parsed, topic levels made
safe, and a paho client made and connected (TLS, credentials, MQTT 3.1.1 or 5)."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    version: int = 4  # MQTT 3.1.1; 5 for MQTT 5
    client_id_prefix: str = "orchard-grader"
    ca_file: str | None = None
    insecure: bool = False
    keepalive: int = 15

    def safe(self) -> str:
        """The broker for logs and health checks, without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port} (MQTT {'5' if self.version == 5 else '3.1.1'})"


def parse_url(url: str) -> BrokerConfig:
    """mqtt://[user:password@]host[:port][?version=5&client_id=x&keepalive=15], mqtts:// for TLS
    (&ca=/path/ca.pem, &insecure=1). ValueError names what is wrong."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("mqtt", "tcp", "mqtts", "ssl", "tls"):
        raise ValueError(f"GRADER_MQTT_URL: scheme must be mqtt:// or mqtts://, got {url.split('://')[0]!r}")
    if not u.hostname:
        raise ValueError("GRADER_MQTT_URL: no broker host")
    tls = scheme in ("mqtts", "ssl", "tls")
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    versions = {"3.1.1": 4, "311": 4, "4": 4, "5": 5, "5.0": 5}
    if q.get("version", "3.1.1") not in versions:
        raise ValueError(f"GRADER_MQTT_URL: version must be 3.1.1 or 5, got {q['version']!r}")
    return BrokerConfig(
        host=u.hostname,
        port=u.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
        version=versions[q.get("version", "3.1.1")],
        client_id_prefix=q.get("client_id", "orchard-grader"),
        ca_file=q.get("ca"),
        insecure=q.get("insecure", "0").lower() in ("1", "true", "yes"),
        keepalive=int(q.get("keepalive", 15)),
    )


_TOPIC_UNSAFE = re.compile(r"[/+#\x00]")


def topic_level(value: str | None) -> str:
    """A camera or line name as one topic level: no separators or wildcards."""
    return _TOPIC_UNSAFE.sub("_", value) if value else "none"


def make_client(cfg: BrokerConfig, client_id: str, persistent: bool = False):
    """A paho client for ``cfg`` (TLS, credentials, protocol version), not yet connected; connect it
    with ``connect(client, cfg)``. ``persistent``: the broker keeps the session's subscriptions and
    queues QoS 1 messages while the client is away (``grader sorter-sim``, as a controller would)."""
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if cfg.version == 5:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent)
    c._grader_persistent = persistent
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        c.tls_set(ca_certs=cfg.ca_file, cert_reqs=ssl.CERT_NONE if cfg.insecure else ssl.CERT_REQUIRED)
        if cfg.insecure:
            c.tls_insecure_set(True)
    c.connect_timeout = 5.0
    return c


def connect(client, cfg: BrokerConfig) -> None:
    """Connect a client made by ``make_client`` (MQTT 5: a persistent session lasts a day)."""
    if cfg.version == 5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        persistent = getattr(client, "_grader_persistent", False)
        props.SessionExpiryInterval = 86_400 if persistent else 0
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=not persistent, properties=props)
    else:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
