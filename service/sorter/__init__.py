"""The sorter link over MQTT: every graded fruit's outlet decision out to the sorter's controller,
the sorter's ejections back into each fruit's history, and the line's alerts out.

Nothing is lost on the way out. A decision is an outbox row written in the same transaction as its
result (``Outbox.enqueue``, called by ``Repository``); a ``Publisher`` thread in each service
process claims the oldest rows (a claim per row, as the review queue claims fruit, so several
workers or replicas never send one message at the same time and a camera's messages go out in
order), publishes them with QoS 1 and marks them sent only on the broker's PUBACK. A message may be
sent twice (a PUBACK lost with the connection, a process killed between PUBACK and marking): the
controller deduplicates on ``result_id`` + ``fruit_index``, and sees gaps and repeats in ``seq``,
which counts up per camera. While the broker is away grading goes on, the backlog grows and is
shown on /readyz, /metrics and the /line page; when it is back the backlog drains in order.

Topics (``<prefix>`` is GRADER_MQTT_TOPIC_PREFIX, ``<line>`` the camera's line):
    <prefix>/<line>/<camera_id>/outlet   decisions out, QoS 1
    <prefix>/<line>/ejections            ejections in: {"result_id", "fruit_index", "outlet", "at"}
    <prefix>/<line>/alerts               line alerts out when one starts or clears, QoS 1, retained

Modules: ``broker`` (the broker's URL, topic levels, the paho client), ``outbox`` (the rows written
with each result), ``publisher`` (the thread; with ``claims``, ``ejections`` and ``alerts``, its
parts), ``snapshot`` (what the /line page and the alerts show), ``metrics`` (the Prometheus series).
The names the rest of the service uses are imported here.
"""

from .broker import BrokerConfig, connect, make_client, parse_url, topic_level
from .outbox import Outbox, next_seq
from .publisher import Publisher
from .snapshot import alert_key, line_snapshot, sorter_snapshot

__all__ = [
    "BrokerConfig",
    "Outbox",
    "Publisher",
    "alert_key",
    "connect",
    "line_snapshot",
    "make_client",
    "next_seq",
    "parse_url",
    "sorter_snapshot",
    "topic_level",
]
