"""The live line for supervisors: snapshot figures, alerts, the event stream, and the /line page
in headless Chromium against a real server fed by a conveyor clip."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
from sqlalchemy import update

from datasets.synthetic import make_fruit_image
from datasets.video import make_conveyor_clip
from service.line import line_stats
from store.tables import FruitRow, ResultRow

from .conftest import API_KEYS, headers, png_bytes


def _post(client, seed, lane, camera="cam-L", mm_per_px=None):
    img, _ = make_fruit_image(seed=seed)
    data = {"lane": lane, "camera_id": camera, **({"mm_per_px": mm_per_px} if mm_per_px else {})}
    r = client.post("/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, data=data, headers=headers())
    assert r.status_code == 200
    return r.json()


def test_snapshot_counts_lanes_grades_and_raises_alerts(client):
    repo = client.app.state.ctx.repo
    calm = [_post(client, k, str(1 + k % 2), mm_per_px="0.25") for k in range(12)]
    ids = [r["id"] for r in calm]
    with repo.sessions() as s, s.begin():  # these graded 30 minutes ago, none flagged: the normal band
        # (set here: rendered fruit are out of distribution for the real apple model, so it flags them `ood`)
        s.execute(
            update(ResultRow).where(ResultRow.id.in_(ids)).values(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30))
        )
        s.execute(update(FruitRow).where(FruitRow.result_id.in_(ids)).values(flagged=False, priority=None))
    for k in range(12):
        _post(client, 100 + k, "3")  # uncalibrated now: every one flagged
    snap = line_stats(repo)
    assert snap["fruit"] == {"window": 24, "recent": 12}
    assert snap["throughput_per_min"]["lanes"] == [{"lane": "3", "fruit_per_min": 2.4}]
    assert sum(g["count"] for g in snap["grade_mix"]) == 24
    assert snap["flag_rate"]["recent"] == 1.0 and snap["flag_rate"]["before"] < 0.5, snap["flag_rate"]
    assert [a["kind"] for a in snap["alerts"]] == ["flag_rate"]
    assert len(snap["last_flagged"]) == 8 and snap["last_flagged"][0]["thumbnail_url"].startswith("/v1/results/")
    later = line_stats(repo, silent_s=120, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=3))
    assert "camera_silent" in [a["kind"] for a in later["alerts"]] and later["cameras"][0]["silent"]
    assert client.get("/v1/line/stats", headers=headers("inspector")).json()["fruit"]["window"] == 24


def test_stream_sends_snapshots_as_server_sent_events(client):
    _post(client, 1, "1")
    with client.stream("GET", "/v1/line/stream?max_events=2&every_s=0.5", headers=headers("trainer")) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert len(events) == 2 and events[0]["fruit"]["window"] == 1


@pytest.mark.slow
@pytest.mark.browser
def test_line_page_shows_a_clip_live(tmp_path):
    from service.process import ServerProcess

    from .test_review_page import CHROMIUM_ARGS, chromium_or_skip

    exe = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    clip = make_conveyor_clip(tmp_path / "belt.avi", lanes=3, seconds=6, seed=5)
    from service.process import free_port

    # the sorter's broker is away (nothing listens there): the board shows the decisions waiting for it
    env = {
        "GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()),
        "GRADER_LINE_SILENT_S": "4",
        "GRADER_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
    }
    with ServerProcess(tmp_path / "var", env) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(srv.url + "/line")
        page.fill("#key", API_KEYS["inspector"])
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#live:not([hidden])")
        assert page.inner_text("#n-window") == "0"
        with open(clip.path, "rb") as f:  # the camera posts its clip while the supervisor watches
            r = httpx.post(
                srv.url + "/v1/cameras/line1-cam1/video",
                files={"video": ("b.avi", f.read(), "video/x-msvideo")},
                data={"mm_per_px": "0.6", "lanes": "3"},
                headers={"X-API-Key": API_KEYS["camera"]},
                timeout=300,
            )
        graded = r.json()["counts"]["graded"]
        assert graded == len(clip.fruits)
        page.wait_for_selector(f"#n-window:text-is('{graded}')", timeout=15000)  # no reload: the stream brought it
        assert {el.get_attribute("data-name") for el in page.query_selector_all("#lanes .bar")} == {"lane 1", "lane 2", "lane 3"}
        assert "line1-cam1" in page.inner_text("#cameras")
        page.wait_for_selector(f"#sorter-backlog:text-is('{graded}')", timeout=15000)
        assert "NOT connected" in page.inner_text("#sorter-detail") and "warn" in page.get_attribute("#sorter-tile", "class")
        page.wait_for_selector("#alerts li.critical:has-text('line1-cam1')", timeout=20000)  # then the camera goes quiet
        assert API_KEYS["inspector"] not in page.url and not problems, problems
        page.screenshot(path=str(tmp_path / "line.png"))
        browser.close()
