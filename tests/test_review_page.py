"""The inspectors' review page, driven in real headless Chromium against a real server process.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`); Playwright only drives it and
never downloads a browser. Without Chromium these tests skip, unless GRADER_REQUIRE_BROWSER=1
(set by .ci/run) makes that a failure."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from datasets.synthetic import make_fruit_image
from service.process import ServerProcess

from .conftest import API_KEYS, jpeg_bytes

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("GRADER_CHROMIUM", "/usr/bin/chromium")
#: flags for a root, display-less, offline machine (no sandbox user namespace, no Google services)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_or_skip() -> str:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("GRADER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing (install Debian's chromium package: `make test` does)")
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium package: `make test` does)")


def h(role: str) -> dict[str, str]:
    return {"X-API-Key": API_KEYS[role]}


def post_fruit(base: str, seed: int, lot_id: str, camera_id: str, **form) -> dict:
    """One uncalibrated synthetic fruit: graded provisionally and flagged `uncalibrated`."""
    img, _ = make_fruit_image(seed=seed, diameter_mm=66 + seed % 7, mm_per_px=0.3, blemishes_cm2=(0.6,) if seed % 2 else ())
    r = httpx.post(
        base + "/v1/grade",
        files={"image": (f"{seed}.jpg", jpeg_bytes(img), "image/jpeg")},
        data={"lot_id": lot_id, "camera_id": camera_id, **form},
        headers=h("camera"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
    with ServerProcess(tmp_path_factory.mktemp("review") / "var", env) as srv:
        httpx.post(
            srv.url + "/v1/lots", json={"id": "L-7", "commodity": "apple", "grower": "Hillside"}, headers=h("camera")
        ).raise_for_status()
        yield srv
        assert "Traceback" not in srv.log(), srv.log()[-3000:]


@pytest.fixture(scope="module")
def browser():
    exe = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, base: str, viewport=(1366, 768)):
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(base + "/review")
    return ctx, page, problems


def sign_in(page, key: str, name: str) -> None:
    page.fill("#key", key)
    page.fill("#name", name)
    page.click("#signin-form button[type=submit]")


def shown_fruit(page, fruit: int | None = None) -> int:
    """The fruit whose picture is on screen (waits for one, or for `fruit`). Waits use selectors:
    the page's CSP rightly forbids the eval that wait_for_function would need."""
    page.wait_for_selector("#picture[data-fruit]" if fruit is None else f"#picture[data-fruit='{fruit}']")
    return int(page.get_attribute("#picture", "data-fruit"))


def queue_ids(base: str) -> list[int]:
    q = httpx.get(base + "/v1/review/queue?lot_id=L-7", headers=h("inspector")).json()
    return [i["fruit"] for i in q["items"]]


def test_inspector_works_the_queue_with_the_keyboard(server, browser):
    base = server.url
    for seed in (1, 2, 3):
        post_fruit(base, seed, "L-7", "cam-A")
    expected = queue_ids(base)
    assert len(expected) == 3
    ctx, page, problems = open_page(browser, base)
    try:
        # a wrong key is refused on the page, and nothing is stored in the browser
        sign_in(page, API_KEYS["camera"], "Ana")
        page.wait_for_selector("#signin-error:has-text('not an inspector')")
        assert page.evaluate("sessionStorage.getItem('grader.key')") is None
        problems.clear()  # that refusal (a 403) was the point; from here on the console stays clean
        sign_in(page, API_KEYS["inspector"], "Ana")
        page.wait_for_selector("#queue-list li >> nth=2")
        assert page.inner_text("#count-total") == "3"
        assert API_KEYS["inspector"] not in page.url  # the key lives in the tab's session storage, never in the URL
        assert page.evaluate("sessionStorage.getItem('grader.key')") == API_KEYS["inspector"]
        # the list can be drawn before the claimed fruit's details: wait for them, never read too early
        page.wait_for_selector("#flags li")
        assert "uncalibrated" in page.inner_text("#flags")
        assert "mm" in page.inner_text("#measurements") or "uncalibrated" in page.inner_text("#measurements")
        assert page.is_visible("#keys") and "Enter" in page.inner_text("#keys")  # shortcuts are shown

        # highest priority first, and the fruit on screen is claimed by this inspector
        first = shown_fruit(page)
        assert first == expected[0]
        claimed = httpx.get(base + "/v1/review/queue?lot_id=L-7", headers=h("inspector")).json()["items"][0]
        assert claimed["claimed_by"] == "Ana"
        grades = claimed["grades"]

        # overlays toggle from the keyboard: the heat map layer is fetched and shown
        page.keyboard.press("h")
        page.wait_for_selector("#picture[data-layers*=heatmap]")
        page.keyboard.press("h")
        page.wait_for_selector("#picture[data-layers='contour,diameter,blemish']")
        # ...and the defect model's own map (M), drawn from the map stored with the result
        page.keyboard.press("m")
        page.wait_for_selector("#picture[data-layers*=cnn]")
        page.wait_for_function("document.getElementById('picture').complete && document.getElementById('picture').naturalWidth > 0")
        assert "unavailable" not in page.inner_text("#status")
        page.keyboard.press("m")
        page.wait_for_selector("#picture[data-layers='contour,diameter,blemish']")

        page.keyboard.press("Enter")  # confirm fruit 1
        page.wait_for_selector("#status:has-text('Confirmed')")
        second = shown_fruit(page, expected[1])
        page.keyboard.press("2")  # correct fruit 2 to the standard's second grade
        page.wait_for_selector("#status:has-text('Corrected')")
        shown_fruit(page, expected[2])
        page.keyboard.press("u")  # undo: fruit 2 comes back
        page.wait_for_selector("#status:has-text('undone')")
        shown_fruit(page, second)
        # correct it again, this time to the third grade with a defect label and a note
        page.keyboard.press("l")
        page.select_option("#defect-label", "bruise")
        page.keyboard.press("Escape")
        page.keyboard.press("n")
        page.keyboard.type("soft spot by the stem")
        page.keyboard.press("Escape")
        page.keyboard.press("3")
        page.wait_for_selector(f"#status:has-text('{grades[2]}')")
        shown_fruit(page, expected[2])
        page.keyboard.press("y")  # confirm fruit 3
        page.wait_for_selector("#queue-empty", state="visible")
        page.wait_for_selector("#count-total:text-is('0')")  # the count follows the list (and the server's refresh)

        # the stored verdicts, through the API
        vs = httpx.get(base + "/v1/review/verdicts", headers=h("inspector")).json()["verdicts"]
        by_fruit = {}
        for v in sorted(vs, key=lambda v: v["id"]):
            by_fruit.setdefault(v["fruit"], []).append(v)
        assert [v["decision"] for v in by_fruit[expected[0]]] == ["confirm"]
        retracted, standing = by_fruit[second]
        assert retracted["retracted"] and retracted["grade"] == grades[1]
        assert not standing["retracted"] and standing["decision"] == "correct" and standing["grade"] == grades[2]
        assert standing["defect_label"] == "bruise" and standing["note"] == "soft spot by the stem"
        assert standing["model_grade"] == by_fruit[expected[0]][0]["model_grade"] or standing["model_grade"]
        assert all(v["inspector"] == "Ana" for v in vs)
        assert [v["decision"] for v in by_fruit[expected[2]]] == ["confirm"]

        # new flagged fruit appear without a reload
        post_fruit(base, 4, "L-7", "cam-B")
        page.wait_for_selector("#queue-list li", timeout=15000)
        assert page.inner_text("#count-total") == "1"

        # the history view: verdicts by inspector, agreement per flag, corrections
        page.keyboard.press("g")
        page.wait_for_selector("#by-inspector td:has-text('Ana')")
        row = page.inner_text("#by-inspector")
        assert re.search(r"Ana\s+3\s+2\s+1", row), row
        assert "uncalibrated" in page.inner_text("#by-flag")
        assert "bruise" in page.inner_text("#corrections")
        assert not problems, problems
    finally:
        ctx.close()


def test_two_inspectors_never_hold_the_same_fruit(server, browser):
    post_fruit(server.url, 11, "L-7", "cam-C")
    post_fruit(server.url, 12, "L-7", "cam-C")
    ctx1, p1, _ = open_page(browser, server.url)
    ctx2, p2, _ = open_page(browser, server.url)
    try:
        sign_in(p1, API_KEYS["inspector"], "Ben")
        f1 = shown_fruit(p1)
        sign_in(p2, API_KEYS["inspector"], "Cleo")
        f2 = shown_fruit(p2)
        assert f1 != f2  # the second inspector is given the next free fruit
        p1.keyboard.press("Enter")
        p1.wait_for_selector("#status:has-text('Confirmed')")
        p2.keyboard.press("Enter")
        p2.wait_for_selector("#status:has-text('Confirmed')")
        vs = httpx.get(server.url + "/v1/review/verdicts", headers=h("inspector")).json()["verdicts"]
        assert {(v["fruit"], v["inspector"]) for v in vs if v["fruit"] in (f1, f2)} == {(f1, "Ben"), (f2, "Cleo")}
    finally:
        ctx1.close()
        ctx2.close()


@pytest.mark.parametrize("viewport", [(1366, 768), (768, 1024)], ids=["laptop", "tablet"])
def test_page_fits_laptop_and_tablet_and_sends_security_headers(server, browser, viewport):
    post_fruit(server.url, 21, "L-7", "cam-D")
    ctx, page, problems = open_page(browser, server.url, viewport)
    try:
        sign_in(page, API_KEYS["inspector"], "Dee")
        shown_fruit(page)
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"page scrolls sideways at {viewport}: {width}"
        for sel in ("#picture", "#confirm", "#grade-buttons button >> nth=0", "#measurements"):
            box = page.locator(sel).bounding_box()
            assert box and box["width"] > 0 and box["x"] + box["width"] <= viewport[0] + 1, sel
        assert not problems, problems
    finally:
        ctx.close()
    r = httpx.get(server.url + "/review")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "cdn" not in r.text.lower()
    assert r.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script>|\son[a-z]+=", r.text), "no inline scripts or handlers: the CSP forbids them"
    for src in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert src.startswith("/static/"), f"everything served locally: {src}"
