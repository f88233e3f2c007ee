"""One Settings object for the whole service (env prefix GRADER_), injected into create_app."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO_ROOT / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADER_", env_file=None, extra="ignore")

    #: where the database (SQLite default), the stored images and generated API keys live
    data_dir: Path = Path("./var")
    #: SQLAlchemy URL; default SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    #: a model artifact directory (model.onnx + metadata.json), or a directory with a DEFAULT pointer
    model_dir: Path = SHIPPED_MODELS
    #: where commodity profiles' models are found (grader/commodities/*.toml: model = "<name>/<version>")
    models_root: Path = SHIPPED_MODELS
    #: "role:key,role:key" (or role:sha256:<hex digest>) with roles camera, inspector, trainer, admin.
    #: Unset: keys are generated on first start, printed once, and their hashes kept in data_dir/api_keys.json.
    api_keys: str | None = None
    #: requests a minute per API key (token bucket, bursts of 10 s worth); past it 429 + Retry-After.
    #: Counted per process. 0 = no limit.
    rate_limit_per_min: int = Field(default=12_000, ge=0)
    #: failed authentications (unknown key) a client address may make in a burst, and how many a
    #: minute after that; past it every request from that address gets 429 + Retry-After until the
    #: bucket refills, so keys cannot be guessed at line speed. Per process. 0 = no limit.
    auth_failure_burst: int = Field(default=100, ge=0)
    auth_failures_per_min: int = Field(default=60, ge=0)
    #: grade standard used when a request names none (an id from grader/standards/*.toml)
    default_standard: str = "unece-ffv50-apples"
    #: a directory with a packhouse's own standard files, added to the shipped ones
    standards_dir: Path | None = None
    #: a directory with a packhouse's own commodity profiles (TOML), added to / replacing the shipped ones
    commodities_dir: Path | None = None

    #: colour of the reference spheres a frame may carry (hue band in degrees; default an
    #: optic-yellow tennis ball). A narrower band avoids taking yellow fruit for a reference.
    reference_hue_deg: tuple[float, float] = (58.0, 85.0)

    # --- input limits: bigger uploads get 413, bigger images 422 (decompression bombs)
    max_image_bytes: int = Field(default=15 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    #: the live line page: a camera that sent results within the hour but none for this long raises an alert
    line_silent_s: float = Field(default=120.0, gt=0)
    #: line-camera clips: bytes and frames accepted per upload
    max_video_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_video_frames: int = Field(default=6000, gt=0)
    #: seconds an upload may take to decode before it is refused (422)
    decode_budget_s: float = Field(default=10.0, gt=0)
    #: seconds a clip may take to decode and grade, all its frames together, before it is refused (422)
    video_budget_s: float = Field(default=300.0, gt=0)
    #: POST /v1/grade/batch: bytes of all its images together
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: POST /v1/models: bytes of model.onnx and of metadata.json
    max_model_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    max_metadata_bytes: int = Field(default=1024 * 1024, gt=0)
    #: seconds an uploaded model may take to load and run its checks (in a process of its own) before it is refused
    model_check_timeout_s: float = Field(default=120.0, gt=0)
    #: bytes of any other request body (JSON bodies, forms without a file)
    max_json_bytes: int = Field(default=64 * 1024, gt=0)

    # --- connections (`grader serve`): every body limit above is checked from the request's
    # headers before its body is read, and before that its key
    #: a client that sends no byte of its body (or of its request head) for this long is answered
    #: 408 and its connection closed
    body_read_timeout_s: float = Field(default=15.0, gt=0)
    #: ...and one whose body, after that long, has come at under this many bytes a second on
    #: average (a body dripped a byte at a time) gets 408 too
    min_body_rate_bytes_s: float = Field(default=16 * 1024, ge=0)
    #: an idle keep-alive connection is closed after this long
    timeout_keep_alive_s: int = Field(default=5, ge=1)
    #: open connections per server process; past it new ones get 503 (uvicorn's limit_concurrency)
    max_connections: int = Field(default=256, ge=1)
    #: serve the interactive API docs at /docs (Swagger UI, its assets served by the service itself)
    docs_enabled: bool = True
    #: SQLite's synchronous mode: FULL syncs the write-ahead log at every commit, so an acknowledged
    #: result survives a power failure; NORMAL may lose the last commits (faster, not durable)
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    # --- inference
    #: ONNX Runtime intra-op threads; 0 = one per CPU core
    onnx_threads: int = Field(default=0, ge=0)
    #: OpenCV's own worker threads per process. Requests already run in parallel threads (and
    #: processes, with --workers), so measurement runs single-threaded: OpenCV's pool splitting a
    #: 256-px fruit photo costs more CPU than it saves (compare: GRADER_OPENCV_THREADS=0 bench/serve.py).
    opencv_threads: int = Field(default=1, ge=0)

    #: micro-batching: rows of the network per inference call (crops times the model's test-time
    #: views: 16 crops of a one-view model, 4 of the four-view apple default), how long the first request waits for company,
    #: and how many requests may wait before the service answers 503 (bounded latency under overload)
    max_batch: int = Field(default=16, ge=1, le=256)
    max_batch_wait_ms: float = Field(default=5.0, ge=0, le=100)
    max_inference_queue: int = Field(default=256, ge=1)
    #: grade requests in progress at once in one server process; past it 503 + Retry-After. More
    #: only queue: at 100 fruit/s offered to 2 workers on 2 cores, 24 collapsed throughput to about
    #: 40/s with seconds of latency, 8 kept about 90/s (`bench/serve.py --max-in-flight N`)
    max_in_flight: int = Field(default=8, ge=1)

    # --- flag triggers (each trades inspector workload against missed abnormal fruit)
    #: widen to send more borderline fruit to inspectors; narrow to trust the model more.
    #: Unset: the model's own review band from its metadata.
    review_band: tuple[float, float] | None = None
    min_sharpness: float = 20.0
    max_clipped_frac: float = 0.25
    #: size / Brix further than this many robust SDs from the lot's is flagged (lower: more reviews)
    outlier_k: float = Field(default=3.5, gt=0)
    #: ...once the lot holds this many values
    outlier_min_n: int = Field(default=10, ge=3)
    #: share (0-1) of unflagged fruit with an uncertain defect score sent to review anyway, so the
    #: inspectors' verdicts teach the next model where it is unsure (active learning); 0 = off
    review_sample_share: float = Field(default=0.02, ge=0, le=1)
    #: a fruit the model calls defective with juice this sweet or sweeter is flagged `signals_disagree`
    disagreement_min_brix: float = 13.0

    # --- orchard scenes (service/orchard.py): fruit on the tree, found by the detector and sized from the pixels
    #: the scene a camera's images show unless a request says (`scene` field): belt (the default) or orchard,
    #: e.g. {"tree-cam-1": "orchard"}
    camera_scenes: dict[str, str] = Field(default_factory=dict)
    #: each camera's focal length in pixels, for the perspective correction of orchard sizes, e.g. {"tree-cam-1": 1480}
    camera_focal_px: dict[str, float] = Field(default_factory=dict)
    #: the fruit detector for orchard scenes: an artifact folder (model.onnx + metadata.json), or a folder of
    #: versions whose newest is used; none there: orchard requests need `boxes`, else a crop's centre fruit is sized
    detector_dir: Path = SHIPPED_MODELS / "detectors" / "orchard-detector"
    #: diameter of the reference spheres hung in orchard frames (tennis balls), mm
    orchard_reference_mm: float = Field(default=65.46, gt=0)

    # --- the sorter link (MQTT; service/sorter/). Off unless a broker URL is set.
    #: mqtt://[user:password@]host[:1883], or mqtts:// for TLS (port 8883). Query options: version=3.1.1|5,
    #: client_id=<prefix>, ca=<CA file>, insecure=1 (TLS without checking the certificate), keepalive=<s>
    mqtt_url: str | None = None
    #: topics: <prefix>/<line>/<camera_id>/outlet, <prefix>/<line>/ejections, <prefix>/<line>/alerts
    mqtt_topic_prefix: str = "orchard-grader"
    #: the line a camera belongs to unless camera_lines names another, e.g. {"cam-7": "line-2"}
    line_name: str = "line-1"
    camera_lines: dict[str, str] = Field(default_factory=dict)
    #: a fruit published this long ago and not reported ejected by the sorter raises an alert; 0 = the
    #: sorter does not report ejections
    sorter_ejection_timeout_s: float = Field(default=30.0, ge=0)
    #: an outbox message waiting this long for the broker's acknowledgement raises the backlog alert
    #: (and /readyz says degraded)
    mqtt_backlog_alert_s: float = Field(default=10.0, gt=0)
    #: after the broker comes back, wait this long before sending the backlog, so that controllers
    #: reconnecting at the same time have subscribed again (one with a persistent session misses nothing anyway)
    mqtt_resume_delay_s: float = Field(default=3.0, ge=0)
    #: how long a publisher's claim on outbox rows lasts (another worker or replica takes them over after it)
    mqtt_claim_s: float = Field(default=10.0, gt=0)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'grader.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def tmp_dir(self) -> Path:
        """Where uploads being checked wait (clips): inside the data dir, emptied as each request ends."""
        return self.data_dir / "tmp"

    @property
    def largest_upload_bytes(self) -> int:
        """The largest body the service accepts: what readiness wants free on the disk."""
        return max(self.max_image_bytes, self.max_batch_bytes, self.max_video_bytes, self.max_model_bytes + self.max_metadata_bytes)
