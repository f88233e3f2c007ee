"""The sorter link's Prometheus series (/metrics): backlog, connection, messages acknowledged,
ejections, and the time from a message's transaction to the broker's PUBACK."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ..metrics import REGISTRY

BACKLOG = Gauge("grader_mqtt_backlog", "outbox messages not yet acknowledged by the MQTT broker (all processes)", registry=REGISTRY)
BACKLOG_AGE = Gauge(
    "grader_mqtt_backlog_oldest_seconds", "age of the oldest outbox message not yet acknowledged (0 when none)", registry=REGISTRY
)
CONNECTED = Gauge("grader_mqtt_connected", "1 while this process is connected to the MQTT broker", registry=REGISTRY)
PUBLISHED = Counter("grader_mqtt_published_total", "messages acknowledged by the broker (PUBACK)", ["kind"], registry=REGISTRY)
EJECTIONS = Counter("grader_mqtt_ejections_total", "ejections reported by the sorter, by outcome", ["outcome"], registry=REGISTRY)
COMMIT_TO_PUBACK = Histogram(
    "grader_mqtt_commit_to_puback_seconds",
    "from a message's transaction to the broker's PUBACK",
    registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 30, 120),
)
