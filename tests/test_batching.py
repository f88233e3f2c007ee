"""Micro-batching with the real ONNX model: concurrent requests share inference calls, and a full
queue answers 503 with Retry-After instead of waiting without bound."""

import threading
import time

import pytest

from datasets.synthetic import make_fruit_image
from grader.crop import crop_for_model
from grader.segment import segment_fruits
from service.batcher import MicroBatcher, Overloaded, ServingModel
from service.onnx_model import OnnxDefectModel
from service.settings import SHIPPED_MODELS

from .conftest import headers, jpeg_bytes


@pytest.fixture(scope="module")
def model():
    return OnnxDefectModel(SHIPPED_MODELS, threads=1)


def crops(n):
    out = []
    for seed in range(n):
        img, _ = make_fruit_image(seed=seed, diameter_mm=70, mm_per_px=0.5)
        seg = segment_fruits(img)[0]
        out.append(crop_for_model(img, seg.bbox, 0.08, seg.mask))
    return out


def test_concurrent_requests_share_batches_and_get_their_own_answers(model):
    cs = crops(8)
    direct = [e.score for e in model.predict(cs)]
    b = MicroBatcher(max_batch=16, max_wait_ms=50)
    served = ServingModel(model, b)
    sizes = []
    orig = b._run
    b._run = lambda items: (sizes.append(sum(len(x) for x, _, _ in items)), orig(items))
    results = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i):
        with b.expecting():  # as the grading path does while it measures the fruit
            barrier.wait()
            results[i] = served.predict([cs[i]])[0].score

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    b.close()
    assert results == pytest.approx(direct, abs=1e-5)
    assert max(sizes) > 1 and sum(sizes) == 8


def test_a_lone_request_is_not_held_for_company(model):
    """Nothing else announced: the batch runs at once, not after max_wait_ms (here 20 s)."""
    b = MicroBatcher(max_batch=16, max_wait_ms=20_000)
    served = ServingModel(model, b)
    cs = crops(1)
    t0 = time.monotonic()
    with b.expecting():
        served.predict(cs)
    assert time.monotonic() - t0 < 10  # far from 20 s: it did not wait for a batch to fill
    assert b._expected == 0  # its announcement ended when it submitted
    with b.expecting(), b.expecting():  # nested announcements of one thread count once
        assert b._expected == 1
    assert b._expected == 0
    b.close()


def test_a_waiting_batch_runs_as_soon_as_the_last_announced_request_drops_out(model):
    """Two requests announced; one submits, the other finds no fruit and never will: the batch
    waiting for it (max_wait_ms 20 s) runs the moment its announcement ends, woken, not polled."""
    b = MicroBatcher(max_batch=16, max_wait_ms=20_000)
    served = ServingModel(model, b)
    cs = crops(1)
    measuring = threading.Event()
    done = threading.Event()

    def no_fruit():
        with b.expecting():
            measuring.set()
            done.wait(timeout=30)  # still "measuring" until the other request has submitted

    other = threading.Thread(target=no_fruit)
    other.start()
    measuring.wait(timeout=10)
    got = []

    def submit():
        with b.expecting():
            got.append(served.predict(cs))

    submitter = threading.Thread(target=submit)
    submitter.start()
    deadline = time.monotonic() + 10
    while b.queued() == 0 and time.monotonic() < deadline and not got:
        time.sleep(0.01)
    time.sleep(0.1)
    assert not got  # held for the announced request's company
    t0 = time.monotonic()
    done.set()  # that request ends without submitting
    submitter.join(timeout=10)
    other.join(timeout=10)
    assert got and time.monotonic() - t0 < 5
    b.close()


def test_full_queue_is_refused_at_once(model):
    b = MicroBatcher(max_queue=1)
    b.close()  # no worker: the queue fills
    served = ServingModel(model, b)
    cs = crops(1)
    blocked = threading.Thread(target=lambda: pytest.raises(Exception, served.predict, cs), daemon=True)
    blocked.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    with pytest.raises(Overloaded):
        served.predict(cs)
    assert time.perf_counter() - t0 < 0.5
    _, fut, _ = b._items.popleft()
    fut.set_exception(RuntimeError("released"))


def test_overloaded_service_answers_503_with_retry_after(settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_inference_queue": 1}))
    batcher = app.state.ctx.batcher
    img, _ = make_fruit_image(seed=1, diameter_mm=70, mm_per_px=0.5)
    files = {"image": ("f.jpg", jpeg_bytes(img), "image/jpeg")}
    with TestClient(app) as c:
        batcher.close()  # after the app's start (which runs the worker): queued crops now stay queued

        def first_request():  # its inference is failed below: the test client re-raises that here
            with pytest.raises(RuntimeError, match="released"):
                c.post("/v1/grade", files=files, headers=headers())

        first = threading.Thread(target=first_request, daemon=True)
        first.start()
        deadline = time.time() + 10
        while batcher.queued() < 1 and time.time() < deadline:
            time.sleep(0.05)
        r = c.post("/v1/grade", files=files, headers=headers())
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        _, fut, _ = batcher._items.popleft()
        fut.set_exception(RuntimeError("released"))
        first.join(timeout=10)
        assert c.get("/v1/results", headers=headers("inspector")).json()["items"] == []  # nothing half-stored


def test_metrics_after_grading(client):
    img, _ = make_fruit_image(seed=2, diameter_mm=70, mm_per_px=0.5)
    client.post("/v1/grade", files={"image": ("f.jpg", jpeg_bytes(img), "image/jpeg")}, headers=headers())
    text = client.get("/metrics").text
    assert 'grader_http_requests_total{method="POST",route="/v1/grade",status="200"}' in text
    assert "grader_inference_batch_size_count" in text and "grader_inference_queue_depth" in text
    assert "grader_store_seconds_count" in text
    assert 'grader_flags_total{code="uncalibrated"}' in text


def test_admission_limit_answers_503_before_any_work(settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_in_flight": 2}))
    app.state.ctx.in_flight = 2  # two grades in progress
    img, _ = make_fruit_image(seed=1, diameter_mm=70, mm_per_px=0.5)
    with TestClient(app) as c:
        r = c.post("/v1/grade", files={"image": ("f.jpg", jpeg_bytes(img), "image/jpeg")}, headers=headers())
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "limit 2" in r.json()["error"]["message"]
        app.state.ctx.in_flight = 0
        assert c.post("/v1/grade", files={"image": ("f.jpg", jpeg_bytes(img), "image/jpeg")}, headers=headers()).status_code == 200
        assert app.state.ctx.in_flight == 0


def test_max_batch_counts_the_rows_a_views_model_runs(model):
    """GRADER_MAX_BATCH is rows of the network: the four-view default runs at most a quarter as many
    crops per call (a call of 16 crops would be 64 rows, holding every request behind it), a
    one-view model the full number."""
    from service.settings import SHIPPED_MODELS as ROOT

    single = OnnxDefectModel(ROOT / "apple-defect" / "0.1.0", threads=1)
    model = OnnxDefectModel(ROOT / "apple-defect" / "0.3.0", threads=1)  # the four-view rollback
    assert model.spec.test_time_views == 4 and single.spec.test_time_views == 1
    cs = crops(12)
    for m, most in ((model, 4), (single, 16)):
        b = MicroBatcher(max_batch=16, max_wait_ms=2_000)
        served = ServingModel(m, b)
        sizes = []
        orig = b._run
        b._run = lambda items: (sizes.append(sum(len(x) for x, _, _ in items)), orig(items))
        barrier = threading.Barrier(12)

        def worker(i, served=served, b=b, barrier=barrier):
            with b.expecting():
                barrier.wait()
                served.predict([cs[i]])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        b.close()
        assert sum(sizes) == 12 and max(sizes) <= most, (m.spec.version, sizes)
        assert max(sizes) > (1 if m is model else 4), (m.spec.version, sizes)  # still batched; the one-view model past 4
