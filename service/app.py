"""create_app(settings): everything the service needs, wired in one place."""

from __future__ import annotations

import contextlib
import gc
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from fastapi import FastAPI

from grader.calibration import ReferenceSpec
from grader.commodities import Commodity, load_commodities
from grader.flags import FlagPolicy
from grader.standards import Standard, get_standard, load_standards
from store.engine import init_db, make_engine
from store.images import ImageStore
from store.repository import Repository

from . import errors
from .auth import AuthFailureLimiter, KeyRing, RateLimiter, load_or_create_keys
from .batcher import MicroBatcher, ServingModel
from .gate import Gate
from .metrics import MetricsMiddleware
from .orchard import load_detector
from .registry import Registry
from .routers import brix, cameras, fruits, grade, health, line, lots, models, pages, results, review, video
from .settings import Settings
from .shadow import Shadow
from .sorter import Outbox, Publisher, line_snapshot

log = logging.getLogger("grader.service")


@dataclass
class Context:
    """The service's wired components, reachable from every route as request.app.state.ctx."""

    settings: Settings
    repo: Repository
    images: ImageStore
    model: ServingModel  # swapped whole on promote/rollback; a request reads it once
    batcher: MicroBatcher
    registry: Registry
    standards: dict[str, Standard]
    default_standard: Standard
    commodities: dict[str, Commodity]
    reference: ReferenceSpec
    policy: FlagPolicy
    api_keys: KeyRing
    keys_file: Path | None
    rate_limiter: RateLimiter
    auth_failures: AuthFailureLimiter
    commodity_models: dict[str, ServingModel] = field(default_factory=dict)  # other commodities' serving models
    shadow: "Shadow | None" = None  # a candidate judging live traffic beside the serving model
    sorter: "Publisher | None" = None  # the MQTT link to the sorter (GRADER_MQTT_URL), else None
    detector: Any = None  # the orchard fruit detector (service/orchard.py: load_detector), else None
    in_flight: int = 0  # grade requests in progress (changed on the event loop only)

    def model_for(self, commodity: str | None) -> ServingModel:
        """The model that judges a commodity: its own when one serves, else the default model."""
        return self.commodity_models.get(commodity or "", self.model)


def build_context(settings: Settings) -> Context:
    cv2.setNumThreads(settings.opencv_threads)  # process-wide: measurement's OpenCV calls
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url, settings.sqlite_synchronous)
    init_db(engine)
    batcher = MicroBatcher(settings.max_batch, settings.max_batch_wait_ms, settings.max_inference_queue)
    repo = Repository(engine)
    registry = Registry(repo, settings.data_dir / "models", batcher, settings.onnx_threads, check_timeout_s=settings.model_check_timeout_s)
    model = registry.startup_model(settings.model_dir)
    standards = load_standards(*([settings.standards_dir] if settings.standards_dir else []))
    commodities = load_commodities(*([settings.commodities_dir] if settings.commodities_dir else []))
    commodity_models = registry.startup_commodity_models(settings.models_root, commodities, model.commodity)
    keys, keys_file, _ = load_or_create_keys(settings.api_keys, settings.data_dir)
    policy = FlagPolicy(
        review_band=settings.review_band or model.spec.review_band,
        min_sharpness=settings.min_sharpness,
        max_clipped_frac=settings.max_clipped_frac,
        outlier_k=settings.outlier_k,
        outlier_min_n=settings.outlier_min_n,
        disagreement_min_brix=settings.disagreement_min_brix,
    )
    sorter = None
    if settings.mqtt_url:  # decisions written to the outbox in each result's transaction, published after commit
        repo.outbox = Outbox(settings)
        sorter = Publisher(settings, repo, repo.outbox)
    return Context(
        sorter=sorter,
        settings=settings,
        repo=repo,
        registry=registry,
        images=ImageStore(settings.images_dir),
        model=model,
        batcher=batcher,
        standards=standards,
        default_standard=get_standard(standards, settings.default_standard),
        commodities=commodities,
        commodity_models=commodity_models,
        reference=ReferenceSpec(hue_deg=settings.reference_hue_deg),
        policy=policy,
        api_keys=keys,
        keys_file=keys_file,
        rate_limiter=RateLimiter(settings.rate_limit_per_min),
        auth_failures=AuthFailureLimiter(settings.auth_failure_burst, settings.auth_failures_per_min),
        shadow=registry.startup_shadow(),
        detector=load_detector(settings.detector_dir),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = build_context(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        ctx.batcher.start()  # running since build_context; again after an earlier shutdown
        if ctx.sorter is not None:
            ctx.sorter.alert_snapshot = lambda: line_snapshot(ctx)
            ctx.sorter.start()
        try:
            yield
        finally:
            if ctx.sorter is not None:
                ctx.sorter.close()
            # the worker thread holds the models: stop it, so that a stopped app frees them
            ctx.batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="orchard-grader",
        version="0.1.0",
        description="Fruit quality grading for packhouses: size, defects and sweetness to a grade, an outlet and a review queue. "
        "Authenticate with the `X-API-Key` header.",
        docs_url=None,  # served below from the service's own copy of Swagger UI, never a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware)
    errors.install(app)
    app.include_router(health.router)
    for r in (grade, results, cameras, video, lots, brix, review, models, fruits, line):
        app.include_router(r.router, responses=errors.ERROR_RESPONSES)
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    if settings.docs_enabled:
        pages.add_docs(app)
    app.add_middleware(Gate)  # in front of everything that could read a body: the key and the size first
    app.add_middleware(pages.PageHeaders)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from the environment (GRADER_*).

    What is built at start (the model sessions, the app, the ORM's metadata: over 100,000 objects)
    lives as long as the process, so it is collected once and moved out of the garbage
    collector's reach: full collections then scan only what requests left behind. Without it the
    first full collection after start held one request for about 75 ms
    (`bench/stages.py --repeats 15 --no-freeze`)."""
    settings = Settings()
    app = create_app(settings)
    # parts of an upload that are spooled to disk while it is read wait inside the data dir too
    tempfile.tempdir = str(settings.tmp_dir.resolve())
    gc.collect()
    gc.freeze()
    return app


def announce(settings: Settings, host: str, port: int) -> None:
    """Tell the person who ran `grader serve` where things are and how to authenticate."""
    _, keys_file, fresh = load_or_create_keys(settings.api_keys, settings.data_dir)
    base = f"http://{host}:{port}"
    print(f"orchard-grader on {base}")
    if settings.docs_enabled:
        print(f"  API docs : {base}/docs")
    print(f"  review   : {base}/review")
    print(f"  line     : {base}/line")
    print(f"  health   : {base}/healthz")
    print(f"  database : {settings.resolved_database_url}")
    print(f"  model    : {settings.model_dir}")
    if settings.mqtt_url:  # the password, if any, is left out
        from .sorter import parse_url

        print(f"  sorter   : {parse_url(settings.mqtt_url).safe()}, decisions on {settings.mqtt_topic_prefix}/<line>/<camera_id>/outlet")
    if fresh:
        print(f"  API keys, generated now and shown only this once (send as header X-API-Key; only their hashes are kept, in {keys_file}):")
        for role, key in fresh.items():
            print(f"    {role:<9} {key}")
    elif keys_file is not None:
        print(f"  API keys : as generated on first start (hashes in {keys_file}); `grader keys reset` makes new ones")
    else:
        print("  API keys : from GRADER_API_KEYS (send as header X-API-Key)")
