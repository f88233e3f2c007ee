"""The sorter link over MQTT (service/sorter/): decisions out through the outbox, nothing lost
while the broker or the server is down, ejections back into the fruit's history, alerts out.
The tests marked slow talk to a real Mosquitto: the machine's (127.0.0.1:1883) or one of their own."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from datasets.synthetic import make_fruit_image
from service.sorter import BrokerConfig, Outbox, Publisher, parse_url, topic_level
from store.engine import init_db, make_engine
from store.repository import Repository
from store.tables import OutboxRow

from .conftest import API_KEYS, headers, jpeg_bytes
from .mqtt_helpers import Broker, Collector, decisions, first_copies, free_port, shared_broker_url

IMG = [jpeg_bytes(make_fruit_image(seed=s, diameter_mm=66 + 2 * s, mm_per_px=0.3)[0]) for s in range(4)]


def _app(settings, **mqtt):
    from service.app import create_app

    return TestClient(create_app(settings.model_copy(update={"mqtt_topic_prefix": f"test-{uuid.uuid4().hex[:8]}", **mqtt})))


def _grade(c, camera: str, fruit: str, i: int = 0, **data):
    r = c.post(
        "/v1/grade",
        files={"image": ("a.jpg", IMG[i % 4], "image/jpeg")},
        data={"camera_id": camera, "fruit_id": fruit, "mm_per_px": "0.3", **data},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    return r.json()


def _outbox(c) -> list[OutboxRow]:
    with c.app.state.ctx.repo.sessions() as s:
        return list(s.scalars(select(OutboxRow).order_by(OutboxRow.id)))


def test_broker_urls():
    assert parse_url("mqtt://127.0.0.1") == BrokerConfig("127.0.0.1", 1883)
    cfg = parse_url("mqtts://sorter%40line:p%3Ass@broker.local?version=5&client_id=packhouse-7&ca=/etc/ca.pem")
    assert (cfg.host, cfg.port, cfg.tls, cfg.username, cfg.password, cfg.version, cfg.client_id_prefix, cfg.ca_file) == (
        "broker.local",
        8883,
        True,
        "sorter@line",
        "p:ss",
        5,
        "packhouse-7",
        "/etc/ca.pem",
    )
    assert "p:ss" not in cfg.safe()
    for bad in ("http://x", "mqtt://", "mqtt://x?version=4.2"):
        with pytest.raises(ValueError):
            parse_url(bad)
    assert topic_level("cam/1+#") == "cam_1__" and topic_level(None) == "none"


def test_decisions_wait_in_the_outbox_while_no_broker_answers(settings):
    """Grading goes on without a broker: each graded fruit's decision is in the outbox, numbered
    per camera, written with its result (a retry adds nothing); /readyz says degraded, /metrics
    and the line snapshot show the backlog."""
    with _app(settings, mqtt_url=f"mqtt://127.0.0.1:{free_port()}", camera_lines={"cam-b": "line-2"}) as c:
        a0 = _grade(c, "cam-a", "a0", 0)
        b0 = _grade(c, "cam-b", "b0", 1)
        r = c.post(
            "/v1/grade/batch",
            files=[("images", ("x.jpg", IMG[i], "image/jpeg")) for i in (2, 3)],
            data={"camera_id": "cam-a", "mm_per_px": "0.3", "lane": "2"},
            headers=headers(),
        )
        assert r.status_code == 200
        _grade(c, "cam-a", "a0", 0)  # a retry: the stored result, no second message
        rows = _outbox(c)
        prefix = c.app.state.ctx.settings.mqtt_topic_prefix
        assert [(r.topic, r.seq) for r in rows] == [
            (f"{prefix}/line-1/cam-a/outlet", 1),
            (f"{prefix}/line-2/cam-b/outlet", 1),
            (f"{prefix}/line-1/cam-a/outlet", 2),
            (f"{prefix}/line-1/cam-a/outlet", 3),
        ]
        assert all(r.sent_at is None for r in rows)
        first = rows[0].payload
        assert set(first) == {
            "result_id",
            "fruit_index",
            "fruit_id",
            "camera_id",
            "lane",
            "outlet",
            "grade",
            "provisional",
            "flags",
            "diameter_mm",
            "graded_at",
            "seq",
        }
        assert first["result_id"] == a0["id"] and first["fruit_index"] == 0 and first["fruit_id"] == "a0"
        assert first["outlet"] == a0["fruits"][0]["outlet"] and first["grade"] == a0["fruits"][0]["grade"]
        assert rows[1].payload["result_id"] == b0["id"] and rows[2].payload["lane"] == "2"
        deadline = time.monotonic() + 10
        while c.app.state.ctx.sorter.backlog[0] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["mqtt"]["connected"] is False and ready.json()["mqtt"]["backlog"] == 4
        assert "grader_mqtt_backlog 4.0" in c.get("/metrics").text
        snap = c.get("/v1/line/stats", headers=headers("inspector")).json()
        assert snap["sorter"]["backlog"] == 4 and snap["sorter"]["connected"] is False


def test_no_outbox_without_a_broker_url(client):
    _grade(client, "cam-a", "a0")
    assert _outbox(client) == []
    assert "mqtt" not in client.get("/readyz").json()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_publishers_never_hold_the_same_rows(tmp_path, settings, db, request):
    """Claims per row, as the review queue's: a second publisher (another worker or replica) takes
    only streams the first is not sending, so a camera's messages never overtake one another."""
    url = request.getfixturevalue("fresh_pg_url") if db == "postgres" else f"sqlite:///{tmp_path / 'g.db'}"
    engine = make_engine(url)
    init_db(engine)
    repo = Repository(engine)
    st = settings.model_copy(update={"mqtt_url": "mqtt://127.0.0.1:1"})
    outbox = Outbox(st)
    with engine.begin() as conn:
        outbox._insert(
            conn,
            {
                s: [
                    {
                        "topic": f"t/{s}",
                        "payload": {"n": i},
                        "retain": False,
                        "result_id": None,
                        "fruit_index": None,
                        "fruit_row_id": None,
                        "outlet": None,
                    }
                    for i in range(5)
                ]
                for s in ("line-1/a", "line-1/b")
            },
        )
    p1, p2 = Publisher(st, repo, outbox), Publisher(st, repo, outbox)
    got1 = p1._claim(3)
    assert [(r.stream, r.seq) for r in got1] == [("line-1/a", 1), ("line-1/a", 2), ("line-1/a", 3)]
    got2 = p2._claim(10)
    assert [(r.stream, r.seq) for r in got2] == [("line-1/b", k) for k in range(1, 6)]  # a is p1's
    p1._to_mark = [(r, time.time()) for r in got1]  # p1's three were acknowledged
    assert [(r.stream, r.seq) for r in p1._claim(10)] == [("line-1/a", 4), ("line-1/a", 5)]
    # a killed process's claims are not waited out by a process of the same host
    import socket

    with engine.begin() as conn:
        conn.execute(
            OutboxRow.__table__.update()
            .where(OutboxRow.__table__.c.stream == "line-1/b")
            .values(claimed_by=f"{socket.gethostname()[:50]}-999999999-dead00")
        )
    p3 = Publisher(st, repo, outbox)
    assert [(r.stream, r.seq) for r in p3._claim(10)] == [("line-1/b", k) for k in range(1, 6)]
    p3._claim(0)
    # concurrent claims never overlap
    p2._claim(0), p1._claim(0)
    with engine.begin() as conn:
        conn.execute(OutboxRow.__table__.update().values(sent_at=None, claimed_by=None, claimed_until=None))
    pubs = [Publisher(st, repo, outbox) for _ in range(4)]
    held: dict[int, list] = {}
    errors = []

    def claim(p):
        try:
            held[id(p)] = p._claim(10)
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(p,)) for p in pubs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    ids = [r.id for rows in held.values() for r in rows]
    assert len(ids) == len(set(ids)) == 10
    streams = [{r.stream for r in rows} for rows in held.values()]
    assert sum(len(s) for s in streams) == len(set().union(*streams))  # each stream with one publisher
    engine.dispose()


# --- against a real broker


def _db(settings, db: str, request):
    """The settings on SQLite (as given) or on a fresh PostgreSQL database."""
    if db == "sqlite":
        return settings
    return settings.model_copy(update={"database_url": request.getfixturevalue("fresh_pg_url")})


DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.slow
@pytest.mark.parametrize("db", DBS)
def test_decisions_are_published_after_commit_in_order_per_camera(settings, db, request):
    url = shared_broker_url()
    with _app(_db(settings, db, request), mqtt_url=url, sorter_ejection_timeout_s=0.5) as c:
        repo, prefix = c.app.state.ctx.repo, c.app.state.ctx.settings.mqtt_topic_prefix
        committed_when_received = []
        sub = Collector(
            url, f"{prefix}/#", on_message=lambda t, m: committed_when_received.append(repo.get_result(m["result_id"]) is not None)
        )
        try:
            ids = {"cam-a": [], "cam-b": []}
            for i in range(3):
                ids["cam-a"].append(_grade(c, "cam-a", f"a{i}", i)["id"])
                ids["cam-b"].append(_grade(c, "cam-b", f"b{i}", i + 1)["id"])
            r = c.post(
                "/v1/grade/batch",
                files=[("images", ("x.jpg", IMG[i], "image/jpeg")) for i in range(3)],
                data={"camera_id": "cam-a", "mm_per_px": "0.3"},
                headers=headers(),
            )
            ids["cam-a"] += [x["id"] for x in r.json()["results"]]
            got = decisions(sub.wait_for(lambda m: len(decisions(m)) >= 9))
        finally:
            sub.close()
        assert len(got) == 9 and all(committed_when_received)
        for cam, want in ids.items():
            mine = [m for m in got if m["camera_id"] == cam]
            assert [m["result_id"] for m in mine] == want
            assert [m["seq"] for m in mine] == list(range(1, len(want) + 1))
        events = c.get("/v1/fruits/a1/events", headers=headers("inspector")).json()["events"]
        assert [e["stage"] for e in events][-2:] == ["outlet", "published"] and events[-1]["seq"] == 2
        # a row is marked sent when the broker's PUBACK comes back, which may trail the subscriber's copy
        deadline = time.monotonic() + 15
        while not all(r.sent_at is not None for r in _outbox(c)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(r.sent_at is not None for r in _outbox(c))
        assert c.get("/readyz").json()["status"] == "ready"
        time.sleep(0.6)  # no sorter reports ejections here: past the timeout every fruit is missing
        snap = c.get("/v1/line/stats", headers=headers("inspector")).json()
        assert snap["sorter"]["not_ejected"] == 9 and "not_ejected" in [a["kind"] for a in snap["alerts"]]


@pytest.mark.slow
def test_the_backlog_survives_a_broker_stop_and_drains_in_order(settings, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    try:
        sub = Collector(broker.url, "+/+/+/outlet", client_id="test-sorter")  # a persistent session: queued while away
        with _app(settings, mqtt_url=broker.url, mqtt_backlog_alert_s=0.5, mqtt_resume_delay_s=0.5) as c:
            for i in range(3):
                _grade(c, "cam-a", f"a{i}", i)
            assert len(first_copies(decisions(sub.wait_for(lambda m: len(decisions(m)) >= 3)))) == 3
            broker.stop()
            for i in range(3, 7):  # grading goes on
                _grade(c, "cam-a", f"a{i}", i)
            deadline = time.monotonic() + 10
            while (c.app.state.ctx.sorter.backlog[0] < 4 or c.app.state.ctx.sorter.connected) and time.monotonic() < deadline:
                time.sleep(0.1)
            ready = c.get("/readyz").json()
            assert ready["status"] == "degraded" and ready["mqtt"]["backlog"] == 4
            snap = c.get("/v1/line/stats", headers=headers("inspector")).json()
            assert "mqtt_backlog" in [a["kind"] for a in snap["alerts"]]
            assert "grader_mqtt_backlog 4.0" in c.get("/metrics").text
            broker.start()
            # the broker may deliver a message twice around its restart (QoS 1): a controller keeps the first
            got = first_copies(decisions(sub.wait_for(lambda m: len(first_copies(decisions(m))) >= 7, 20)))
            assert [m["fruit_id"] for m in got] == [f"a{i}" for i in range(7)]
            assert [m["seq"] for m in got] == list(range(1, 8))
            deadline = time.monotonic() + 5
            while c.app.state.ctx.sorter.backlog[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.get("/readyz").json()["status"] == "ready"
        sub.close()
    finally:
        broker.stop()


@pytest.mark.slow
def test_decisions_of_acknowledged_results_arrive_after_a_server_kill(tmp_path):
    """kill -9 of the server while two cameras post and decisions go out, then the broker stops, the
    server restarts and grades more, the broker returns: every fruit whose grade was acknowledged
    arrives, each camera's seq has no gap, and a seq never names two different fruit."""
    from concurrent.futures import ThreadPoolExecutor

    from service.process import ServerProcess

    broker = Broker(tmp_path / "broker").start()
    env = {
        "GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()),
        "GRADER_MQTT_URL": broker.url,
        "GRADER_REVIEW_SAMPLE_SHARE": "0",
        "GRADER_MQTT_RESUME_DELAY_S": "0.5",
    }
    sub = Collector(broker.url, "orchard-grader/#", client_id="test-sorter-kill")
    acked: list[str] = []

    def camera(srv, cam: str, stop: threading.Event, first: int) -> None:
        with httpx.Client(timeout=30) as h:
            for i in range(first, first + 200):
                if stop.is_set():
                    return
                try:
                    r = h.post(
                        srv.url + "/v1/grade",
                        files={"image": ("a.jpg", IMG[i % 4], "image/jpeg")},
                        data={"camera_id": cam, "fruit_id": f"{cam}-{i}", "mm_per_px": "0.3"},
                        headers={"X-API-Key": API_KEYS["camera"]},
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(r.json()["id"])

    def run_cameras(srv, until: int, first: int, kill: bool) -> None:
        stop = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(camera, srv, cam, stop, first) for cam in ("cam-a", "cam-b")]
            while len(acked) < until and not all(f.done() for f in futures):
                time.sleep(0.02)
            if kill:
                srv.kill()  # SIGKILL while decisions are in flight
            stop.set()
            [f.result() for f in futures]

    srv = ServerProcess(tmp_path / "var", env).start()
    try:
        run_cameras(srv, 10, 0, kill=True)
        broker.stop()
        srv = ServerProcess(tmp_path / "var", env).start()  # the broker still away: grading goes on
        run_cameras(srv, len(acked) + 4, 1000, kill=False)
        broker.start()
        got = decisions(sub.wait_for(lambda m: set(acked) <= {d["result_id"] for d in decisions(m)}, 30))
        assert set(acked) <= {d["result_id"] for d in got}
        by_seq: dict[tuple[str, int], set] = {}
        for d in got:
            by_seq.setdefault((d["camera_id"], d["seq"]), set()).add((d["result_id"], d["fruit_index"]))
        assert all(len(v) == 1 for v in by_seq.values())
        for cam in ("cam-a", "cam-b"):
            seqs = sorted({d["seq"] for d in got if d["camera_id"] == cam})
            assert seqs == list(range(1, len(seqs) + 1))  # no gap
    finally:
        sub.close()
        srv.stop()
        broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("db", DBS)
def test_ejections_come_back_into_the_fruit_history_and_alerts_are_retained(settings, monkeypatch, db, request):
    """The sorter (grader sorter-sim) ejects one fruit where it was sent and one elsewhere: both
    are in their fruit's events, the mis-ejection raises a line alert, and the alerts topic keeps
    the line's alerts in force for a controller that connects later (MQTT 5 here)."""
    from service import sorter_sim

    url = shared_broker_url()
    monkeypatch.setattr(Publisher, "ALERTS_EVERY_S", 0.3)
    with _app(_db(settings, db, request), mqtt_url=url + "?version=5", line_silent_s=1.5) as c:
        prefix = c.app.state.ctx.settings.mqtt_topic_prefix
        alerts = Collector(url, f"{prefix}/+/alerts")

        def sim(rate: float) -> threading.Thread:
            ready = threading.Event()
            t = threading.Thread(
                target=sorter_sim.run,
                args=(url,),
                daemon=True,
                kwargs={"prefix": prefix, "delay_s": 0.2, "mis_ejection_rate": rate, "count": 1, "out": None, "ready": ready},
            )
            t.start()
            assert ready.wait(5)
            return t

        t = sim(0.0)
        good = _grade(c, "cam-a", "good", 0)
        t.join(10)
        t = sim(1.0)
        bad = _grade(c, "cam-a", "bad", 1)
        t.join(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            evs = {
                f: [e["stage"] for e in c.get(f"/v1/fruits/{f}/events", headers=headers("inspector")).json()["events"]]
                for f in ("good", "bad")
            }
            if all("ejected" in v for v in evs.values()):
                break
            time.sleep(0.1)
        for f in ("good", "bad"):
            assert evs[f][-2:] == ["published", "ejected"], evs
        ev = {f: c.get(f"/v1/fruits/{f}/events", headers=headers("inspector")).json()["events"][-1] for f in ("good", "bad")}
        assert ev["good"]["outlet"] == good["fruits"][0]["outlet"] and ev["good"]["mis_ejected"] is False
        assert ev["bad"]["outlet"] != bad["fruits"][0]["outlet"] and ev["bad"]["mis_ejected"] is True
        snap = c.get("/v1/line/stats", headers=headers("inspector")).json()
        assert "mis_ejection" in [a["kind"] for a in snap["alerts"]] and snap["sorter"]["mis_ejected_recent"] == 1
        got = alerts.wait_for(
            lambda m: {("mis_ejection", "started"), ("camera_silent", "started")} <= {(x["alert"]["kind"], x["event"]) for _, x, _ in m}
        )
        assert {("mis_ejection", "started"), ("camera_silent", "started")} <= {(x["alert"]["kind"], x["event"]) for _, x, _ in got}
        _grade(c, "cam-a", "wakes-the-camera", 2)  # the silent camera's alert clears
        got = alerts.wait_for(lambda m: ("camera_silent", "cleared") in {(x["alert"]["kind"], x["event"]) for _, x, _ in m})
        kinds = [(x["alert"]["kind"], x["event"]) for _, x, _ in got]
        assert kinds.index(("camera_silent", "started")) < kinds.index(("camera_silent", "cleared"))
        alerts.close()
        time.sleep(0.5)
        later = Collector(url, f"{prefix}/+/alerts")  # a controller connecting now sees the alerts in force
        retained = later.wait_for(lambda m: len(m) >= 1, 5)
        later.close()
        assert retained and retained[0][2] is True and retained[0][0] == f"{prefix}/line-1/alerts"
        assert "mis_ejection" in [a["kind"] for a in retained[0][1]["active"]]
        for line_topic in {t for t, _, _ in got}:  # leave no retained messages behind on the machine's broker
            c.app.state.ctx.sorter._session.client.publish(line_topic, b"", qos=1, retain=True).wait_for_publish(5)


@pytest.mark.slow
def test_fruit_of_a_clip_and_of_a_live_stream_are_published(settings, tmp_path):
    """Line cameras' fruit go out like posted photos: each tracked fruit once, on its camera's topic."""
    import cv2

    from datasets.video import make_conveyor_clip

    url = shared_broker_url()
    clip = make_conveyor_clip(tmp_path / "belt.avi", lanes=3, seconds=5, seed=3)
    with _app(settings, mqtt_url=url) as c:
        prefix = c.app.state.ctx.settings.mqtt_topic_prefix
        sub = Collector(url, f"{prefix}/#")
        try:
            r = c.post(
                "/v1/cameras/belt-cam/video",
                files={"video": ("belt.avi", clip.path.read_bytes(), "video/x-msvideo")},
                data={"mm_per_px": "0.6", "lanes": "3", "belt_speed_mm_s": str(clip.speed_mm_s)},
                headers=headers(),
            )
            clip_fruits = r.json()["fruits"]
            cap = cv2.VideoCapture(str(clip.path))
            frames = []
            while (fr := cap.read())[0]:
                frames.append(cv2.imencode(".jpg", fr[1])[1].tobytes())
            live = []
            with c.websocket_connect(f"/v1/cameras/live-cam/stream?mm_per_px=0.6&lanes=3&fps={clip.fps}", headers=headers()) as ws:
                for b in frames:
                    ws.send_bytes(b)
                ws.send_text("end")
                while (msg := ws.receive_json())["type"] != "summary":
                    live.append(msg)
            n = len(clip_fruits) + len(live)
            got = decisions(sub.wait_for(lambda m: len(decisions(m)) >= n))
        finally:
            sub.close()
        assert clip_fruits and live and len(got) == n
        by_topic = {t: [m["fruit_id"] for m in got if m["camera_id"] == cam] for t, cam in (("clip", "belt-cam"), ("live", "live-cam"))}
        assert sorted(by_topic["clip"]) == sorted(f["fruit_id"] for f in clip_fruits)
        assert sorted(by_topic["live"]) == sorted(f["fruit_id"] for f in live)
        assert {m["lane"] for m in got} <= {"1", "2", "3"}


@pytest.mark.slow
def test_two_workers_publish_each_decision_once_in_order(tmp_path):
    """`grader serve --workers 2` on one SQLite database: both workers' publishers drain one outbox,
    every decision arrives once, and each camera's seq in order."""
    from concurrent.futures import ThreadPoolExecutor

    from service.process import ServerProcess

    url = shared_broker_url()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()), "GRADER_MQTT_URL": url, "GRADER_MQTT_TOPIC_PREFIX": prefix}
    sub = Collector(url, f"{prefix}/+/+/outlet")
    try:
        with ServerProcess(tmp_path / "var", env, workers=2) as srv:

            def post(i: int) -> int:
                with httpx.Client(timeout=60) as h:  # a connection per camera: the kernel spreads them over the workers
                    return h.post(
                        srv.url + "/v1/grade",
                        files={"image": ("a.jpg", IMG[i % 4], "image/jpeg")},
                        data={"camera_id": f"cam-{i % 3}", "fruit_id": f"f{i}", "mm_per_px": "0.3"},
                        headers={"X-API-Key": API_KEYS["camera"]},
                    ).status_code

            with ThreadPoolExecutor(6) as pool:
                assert list(pool.map(post, range(36))) == [200] * 36
            sub.wait_for(lambda m: len(decisions(m)) >= 36)
            time.sleep(0.5)  # nothing more comes
            assert "Traceback" not in srv.log()
        got = decisions(sub.messages)
    finally:
        sub.close()
    assert sorted(m["fruit_id"] for m in got) == sorted(f"f{i}" for i in range(36))
    for cam in range(3):
        assert [m["seq"] for m in got if m["camera_id"] == f"cam-{cam}"] == list(range(1, 13))


@pytest.mark.slow
def test_tls_and_credentials_come_in_the_url(settings, tmp_path):
    """mqtts:// with the broker's CA and a user: decisions go out; a wrong password is refused,
    said on /readyz, and the decisions wait."""
    broker = Broker(tmp_path / "broker", tls=True, users={"grader": "s3cret:pw"}).start()
    try:
        base = f"127.0.0.1:{broker.port}?ca={broker.ca}&version=5"
        with _app(settings, mqtt_url=f"mqtts://grader:s3cret%3Apw@{base}") as c:
            _grade(c, "cam-a", "a0")
            deadline = time.monotonic() + 10
            while not all(r.sent_at for r in _outbox(c)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [r.sent_at is not None for r in _outbox(c)] == [True]
        with _app(settings.model_copy(update={"data_dir": tmp_path / "other"}), mqtt_url=f"mqtts://grader:wrong@{base}") as c:
            _grade(c, "cam-a", "a0")
            deadline = time.monotonic() + 10
            while "error" not in c.get("/readyz").json()["mqtt"] and time.monotonic() < deadline:
                time.sleep(0.1)
            ready = c.get("/readyz").json()
            assert ready["status"] == "degraded" and "refused" in ready["mqtt"]["error"] and "wrong" not in str(ready)
            assert _outbox(c)[0].sent_at is None
    finally:
        broker.stop()
