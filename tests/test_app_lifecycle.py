"""A stopped app lets go of what it holds: its models (hundreds of MB each) and its threads. A test
process, or a host that reloads the app, must not grow by one app's worth at every start."""

import gc
import threading
import weakref

from fastapi.testclient import TestClient

from service.app import create_app


def test_a_stopped_app_is_freed_with_its_models_and_threads(settings):
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/docs").status_code == 200  # every route has been set up and called
        batcher = app.state.ctx.batcher
        assert batcher._worker.is_alive()
    assert not batcher._worker.is_alive()  # the shutdown stopped the inference worker
    ref = weakref.ref(app)
    del app, client, batcher
    gc.collect()
    assert ref() is None, [type(r).__name__ for r in gc.get_referrers(ref())]
    assert "inference-batcher" not in [t.name for t in threading.enumerate()]


def test_an_app_restarted_after_a_shutdown_grades_again(settings):
    from datasets.synthetic import make_fruit_image

    from .conftest import headers, png_bytes

    app = create_app(settings)
    img, _ = make_fruit_image(seed=1, diameter_mm=70.0, mm_per_px=0.3)
    for _ in range(2):  # the second start runs the inference worker again
        with TestClient(app) as client:
            r = client.post("/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, headers=headers())
            assert r.status_code == 200 and r.json()["n_fruits"] == 1
