"""The model registry: artifacts the service knows, which one serves, promotion and rollback.

Artifacts uploaded through the API live under data_dir/models/<name>/<version>/; the one from
GRADER_MODEL_DIR is registered at start. The serving version is a database row, so a promotion
survives restarts and every replica sharing the database loads the same model (each replica
checks for a change at most every `poll_s` seconds)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from grader.errors import InvalidModelArtifact, ModelExists, ModelIsServing, ModelNotPromotable, NoPreviousModel, UnknownModel
from inference.metadata import validate_artifact
from store.repository import Repository
from store.tables import ModelVersionRow, utcnow

from .batcher import MicroBatcher, ServingModel
from .onnx_model import OnnxDefectModel, resolve_model_dir

log = logging.getLogger("grader.registry")


def model_id(meta: dict[str, Any]) -> str:
    return f"{meta['name']}@{meta['version']}"


def version_payload(row: ModelVersionRow) -> dict[str, Any]:
    m = row.meta
    test = (m.get("metrics") or {}).get("test") or {}
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "status": row.status,
        "onnx_sha256": row.onnx_sha256,
        "created_at": row.created_at.isoformat(),
        "promoted_at": None if row.promoted_at is None else row.promoted_at.isoformat(),
        "architecture": m.get("architecture"),
        "classes": m.get("classes"),
        "test_metrics": {k: test.get(k) for k in ("balanced_accuracy", "recall_defective", "auc") if k in test},
    }


def _commodity(row: ModelVersionRow) -> str:
    return str((row.meta or {}).get("commodity", "apple"))


def serving_metadata(repo: Repository, default_dir: Path) -> dict[str, Any]:
    """The metadata of the version serving now (from the database), else of the default artifact."""
    with repo.sessions() as s:
        rows = s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "serving")).all()
        default = json.loads((resolve_model_dir(default_dir) / "metadata.json").read_text())
        row = next((r for r in rows if _commodity(r) == default.get("commodity", "apple")), None)
        if row is not None:
            return dict(row.meta)
    return json.loads((resolve_model_dir(default_dir) / "metadata.json").read_text())


class Registry:
    def __init__(
        self, repo: Repository, store_dir: Path, batcher: MicroBatcher, threads: int, poll_s: float = 5.0, check_timeout_s: float = 120.0
    ) -> None:
        self.repo, self.store_dir, self.batcher, self.threads, self.poll_s = repo, Path(store_dir), batcher, threads, poll_s
        self.check_timeout_s = check_timeout_s
        self._lock = threading.Lock()
        self._checked = 0.0

    def register_dir(self, path: Path) -> ModelVersionRow:
        """Add an artifact directory (validated by loading it) to the registry, if new."""
        path = resolve_model_dir(path)
        loaded = OnnxDefectModel(path, self.threads)
        meta = json.loads((path / "metadata.json").read_text())
        mid = model_id(meta)
        try:
            with self.repo.sessions() as s, s.begin():
                row = s.get(ModelVersionRow, mid)
                if row is None:
                    row = ModelVersionRow(
                        id=mid,
                        name=meta["name"],
                        version=str(meta["version"]),
                        path=str(path),
                        onnx_sha256=loaded.sha256,
                        status="available",
                        meta=meta,
                        created_at=utcnow(),
                    )
                    s.add(row)
        except IntegrityError:  # another process (a worker or replica starting with this one) registered it first
            with self.repo.sessions() as s:
                row = s.get(ModelVersionRow, mid)
            if row is None:
                raise
        return row

    def _serving(self, shipped: ModelVersionRow, commodity: str) -> ServingModel:
        """A commodity's serving version (the shipped artifact becomes it when none serves yet), loaded."""
        with self.repo.sessions() as s, s.begin():
            serving = next(
                (r for r in s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "serving")) if _commodity(r) == commodity),
                None,
            )
            if serving is None:
                serving = s.get(ModelVersionRow, shipped.id)
                serving.status, serving.promoted_at = "serving", utcnow()
            elif serving.id != shipped.id:
                # what serves changes only when a trainer says so, also when an upgrade ships a new default
                log.warning(
                    "%s: serving %s (promoted earlier); the shipped %s is registered but not served: "
                    "POST /v1/models/%s/promote to serve it",
                    commodity,
                    serving.id,
                    shipped.id,
                    shipped.id,
                )
            path, mid = serving.path, serving.id
        return ServingModel(OnnxDefectModel(Path(path), self.threads), self.batcher, mid)

    def startup_model(self, default_dir: Path) -> ServingModel:
        """The model to serve at start: the registry's serving version, else the default (made serving)."""
        default = self.register_dir(default_dir)
        model = self._serving(default, _commodity(default))
        self._checked = time.monotonic()
        return model

    def startup_commodity_models(self, models_root: Path, commodities: dict, default_commodity: str) -> dict[str, ServingModel]:
        """Each other commodity's serving model: its registry version, else the artifact its profile
        names. A commodity without one is judged by the default model."""
        return {
            cid: self._serving(self.register_dir(Path(models_root) / c.model), cid)
            for cid, c in commodities.items()
            if cid != default_commodity and c.model and (Path(models_root) / c.model / "model.onnx").exists()
        }

    def upload(self, onnx_bytes: bytes, meta_bytes: bytes) -> ModelVersionRow:
        """Check an artifact (its metadata against the schema, then its graph loaded, warmed up and
        its parity probe rerun) in a temporary folder, and register it. Every failure is an
        InvalidModelArtifact naming what is wrong (422), and the temporary folder is removed on
        every path."""
        from .model_check import check_in_child

        try:
            meta = json.loads(meta_bytes)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidModelArtifact(f"metadata.json is not valid JSON: {exc}", field="metadata") from None
        validate_artifact(meta)  # the one schema (inference/metadata.py)
        mid = model_id(meta)
        safe = f"{meta['name']}/{meta['version']}"
        if (
            ".." in safe
            or safe.startswith("/")
            or not all(part.replace("-", "").replace("_", "").replace(".", "").isalnum() for part in safe.split("/"))
        ):
            raise InvalidModelArtifact("name and version may hold letters, digits, '.', '-' and '_' only", field="metadata")
        if not onnx_bytes:
            raise InvalidModelArtifact("model.onnx is empty", field="model")
        with self.repo.sessions() as s:
            if s.get(ModelVersionRow, mid) is not None:
                raise ModelExists(f"model {mid} is already registered", field="metadata")
        dest = self.store_dir / safe
        self.store_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.store_dir))
        try:
            (tmp / "model.onnx").write_bytes(onnx_bytes)
            (tmp / "metadata.json").write_bytes(meta_bytes)
            try:
                # a graph that would crash or hang ONNX Runtime does so in a process of its own
                check_in_child(tmp, self.check_timeout_s)
                # refuse what would not serve (corrupt, mismatching) or is not what was trained
                OnnxDefectModel(tmp, self.threads).check_parity()
            except InvalidModelArtifact as exc:  # named without the server's folders
                raise InvalidModelArtifact(
                    exc.message.replace(f"{tmp}/", "").replace(str(tmp), "the upload"), field=exc.field or "model"
                ) from None
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors, numpy's on odd outputs: all a bad artifact
                raise InvalidModelArtifact(
                    f"model.onnx cannot be used: {type(exc).__name__}: {str(exc)[:500]}".replace(str(tmp), "the upload"), field="model"
                ) from None
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.register_dir(dest)

    def promote(self, ctx, mid: str) -> ModelVersionRow:
        """Load the version, then swap it in: requests already running finish on the old model."""
        with self._lock:
            with self.repo.sessions() as s:
                row = s.get(ModelVersionRow, mid)
                if row is None:
                    raise UnknownModel(f"no model {mid}", field="model_id")
                path = row.path
                if row.status != "serving":
                    from .model_meta import promotion_problem

                    problem = promotion_problem(row.meta or {})
                    if problem is not None:
                        raise ModelNotPromotable(f"{mid} may not serve: {problem}", field="model_id")
            loaded = ServingModel(OnnxDefectModel(Path(path), self.threads), self.batcher, mid)  # fails before any change
            with self.repo.sessions() as s, s.begin():
                for other in s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "serving")):
                    if _commodity(other) == loaded.commodity:  # one serving version per commodity
                        other.status = "available"
                row = s.get(ModelVersionRow, mid)
                row.status, row.promoted_at = "serving", utcnow()
            if loaded.commodity == ctx.model.commodity:
                ctx.model = loaded
            else:
                ctx.commodity_models = {**ctx.commodity_models, loaded.commodity: loaded}
            if getattr(ctx, "shadow", None) is not None and ctx.shadow.model_id == mid:
                ctx.shadow = None  # the candidate now serves: nothing left to shadow
            return row

    def rollback(self, ctx, commodity: str | None = None) -> ModelVersionRow:
        """Back to the version that served a commodity (default: the default model's) before the current one."""
        commodity = commodity or ctx.model.commodity
        with self.repo.sessions() as s:
            history = [
                r
                for r in s.scalars(
                    select(ModelVersionRow).where(ModelVersionRow.promoted_at.is_not(None)).order_by(ModelVersionRow.promoted_at.desc())
                )
                if _commodity(r) == commodity
            ]
        if len(history) < 2:
            raise NoPreviousModel("no earlier serving model to roll back to")
        return self.promote(ctx, history[1].id)

    # ------------------------------------------------------------------ shadow mode
    def start_shadow(self, ctx, mid: str):
        """Run this version beside the serving one on live traffic (its opinions are stored, never served)."""
        from .shadow import Shadow

        with self._lock:
            if mid == ctx.model.model_id:
                raise ModelIsServing(f"{mid} is the serving model: shadow a candidate", field="model_id")
            with self.repo.sessions() as s:
                row = s.get(ModelVersionRow, mid)
                if row is None:
                    raise UnknownModel(f"no model {mid}", field="model_id")
                path = row.path
            loaded = OnnxDefectModel(Path(path), self.threads)  # fails before any change
            with self.repo.sessions() as s, s.begin():
                for other in s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "shadow")):
                    other.status = "available"
                s.get(ModelVersionRow, mid).status = "shadow"
            ctx.shadow = Shadow(mid, loaded)
            return ctx.shadow

    def stop_shadow(self, ctx) -> str | None:
        with self._lock:
            with self.repo.sessions() as s, s.begin():
                for row in s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "shadow")):
                    row.status = "available"
            was, ctx.shadow = (ctx.shadow.model_id if ctx.shadow else None), None
            return was

    def startup_shadow(self):
        """The shadow version recorded in the database, loaded (None when there is none or it fails)."""
        from .shadow import Shadow

        with self.repo.sessions() as s:
            row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.status == "shadow"))
            if row is None:
                return None
            mid, path = row.id, row.path
        try:
            return Shadow(mid, OnnxDefectModel(Path(path), self.threads))
        except InvalidModelArtifact:
            return None

    def due(self) -> bool:
        return time.monotonic() - self._checked >= self.poll_s

    def follow(self, ctx) -> None:
        """Pick up a promotion made by another replica (one query every poll_s seconds)."""
        self._checked = time.monotonic()
        with self.repo.sessions() as s:
            serving = {_commodity(r): r.id for r in s.scalars(select(ModelVersionRow).where(ModelVersionRow.status == "serving"))}
        current = {ctx.model.commodity: ctx.model.model_id, **{c: m.model_id for c, m in ctx.commodity_models.items()}}
        for commodity, mid in serving.items():
            if current.get(commodity) != mid:
                self.promote(ctx, mid)

    def list(self) -> list[ModelVersionRow]:
        with self.repo.sessions() as s:
            return list(s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.created_at.desc())))

    def get(self, mid: str) -> ModelVersionRow:
        with self.repo.sessions() as s:
            row = s.get(ModelVersionRow, mid)
        if row is None:
            raise UnknownModel(f"no model {mid}", field="model_id")
        return row
