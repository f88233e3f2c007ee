"""MQTT for the tests: a Mosquitto broker of a test's own (to stop and kill at will) and a subscriber
that collects what arrives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

SHARED_BROKER = ("127.0.0.1", 1883)  # the machine's Mosquitto (started by the machine, checked by .ci/run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_broker_url() -> str:
    """The machine's broker; skips (and .ci/run fails loudly first) when it does not answer."""
    try:
        socket.create_connection(SHARED_BROKER, timeout=2).close()
    except OSError as exc:
        if os.environ.get("GRADER_REQUIRE_MQTT") == "1":  # CI: the broker must be there
            pytest.fail(f"no MQTT broker at {SHARED_BROKER[0]}:{SHARED_BROKER[1]}: {exc}")
        pytest.skip(f"no MQTT broker at {SHARED_BROKER[0]}:{SHARED_BROKER[1]}: {exc}")
    return f"mqtt://{SHARED_BROKER[0]}:{SHARED_BROKER[1]}"


class Broker:
    """`mosquitto -c <conf>` on a free port, persistent (sessions and queued messages survive a stop)."""

    def __init__(self, workdir: Path, tls: bool = False, users: dict[str, str] | None = None) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            if os.environ.get("GRADER_REQUIRE_MQTT") == "1":
                pytest.fail("no mosquitto binary (make mqtt-tools installs it)")
            pytest.skip("no mosquitto binary (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        # `user root`: a broker started by root keeps access to the test's files (ignored when not root)
        conf = [
            f"listener {self.port} 127.0.0.1",
            "user root",
            "persistence true",
            f"persistence_location {self.dir}/",
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        self.ca = None
        if tls and shutil.which("openssl") is None:
            pytest.skip("no openssl to make the test broker's certificate")
        if tls:  # a self-signed certificate for 127.0.0.1, which is also the CA clients trust
            self.ca = self.dir / "cert.pem"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    str(self.dir / "key.pem"),
                    "-out",
                    str(self.ca),
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                ],
                check=True,
                capture_output=True,
            )
            conf += [f"certfile {self.ca}", f"keyfile {self.dir / 'key.pem'}"]
        if users:
            pw = self.dir / "passwords"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf.append("allow_anonymous true")
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


class Collector:
    """Subscribes to ``topic`` with QoS 1 on a persistent session (messages sent while it or the
    broker was away are delivered when both are back) and keeps what arrives, in order."""

    def __init__(self, url: str, topic: str, client_id: str | None = None, on_message=None) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port = url.split("//")[1].split(":")
        self.messages: list[tuple[str, dict, bool]] = []  # (topic, payload, retained)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.hook = on_message  # called with (topic, payload) in paho's thread as each arrives
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}", clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert self.subscribed.wait(5), "no SUBACK"

    def _on_message(self, _c, _u, msg) -> None:
        payload = json.loads(msg.payload) if msg.payload else {}
        if self.hook is not None:
            self.hook(msg.topic, payload)
        with self.lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def wait_for(self, pred, timeout_s: float = 15.0) -> list[tuple[str, dict, bool]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.messages)
            if pred(got):
                return got
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decisions(messages) -> list[dict]:
    return [m for t, m, _ in messages if t.endswith("/outlet")]


def first_copies(ds: list[dict]) -> list[dict]:
    """Decisions deduplicated as a controller must (at-least-once delivery): on result_id + fruit_index."""
    seen, out = set(), []
    for d in ds:
        if (d["result_id"], d["fruit_index"]) not in seen:
            seen.add((d["result_id"], d["fruit_index"]))
            out.append(d)
    return out
