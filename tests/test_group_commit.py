"""Results that arrive together are committed together (Repository.save_result's group commit):
every caller gets its own committed result back, retries still get the first result, and several
processes share one SQLite file. Runs on SQLite and again on the real PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from store.engine import init_db, make_engine
from store.repository import Repository
from store.tables import FruitRow, ImageRow, ResultRow


def _rows(i: int, key: str | None = None, image: int | None = None) -> tuple[ImageRow, ResultRow, list[FruitRow]]:
    sha = hashlib.sha256(f"image-{i if image is None else image}".encode()).hexdigest()
    img = ImageRow(sha256=sha, path=f"/x/{sha}.jpg", media_type="image/jpeg", width_px=8, height_px=8, size_bytes=10)
    res = ResultRow(
        idempotency_key=key,
        image_sha256=sha,
        model_name="m",
        model_version="1",
        standard_id="s",
        standard_version="1",
        n_fruits=1,
        flagged=False,
        payload={"i": i, "fruits": [{"diameter_mm": 60.0 + i % 10, "grade": "Class I"}]},
    )
    fruit = FruitRow(index=0, flagged=False, diameter_mm=60.0 + i % 10)
    return img, res, [fruit]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def repo(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'grader.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    init_db(engine)
    yield Repository(engine)
    engine.dispose()


def _count(repo: Repository, table) -> int:
    with repo.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_many_concurrent_saves_are_each_committed_and_returned(repo, monkeypatch):
    before = _count(repo, ResultRow)
    start = threading.Barrier(16)
    sizes: list[int] = []
    write_group = repo._write_group

    def observed(group):
        sizes.append(len(group))
        return write_group(group)

    monkeypatch.setattr(repo, "_write_group", observed)

    def save(i: int) -> ResultRow:
        rows = _rows(1000 + i)
        if i < 16:
            start.wait()  # the first sixteen arrive together: they are written as groups
        return repo.save_result(*rows)

    with ThreadPoolExecutor(16) as pool:
        saved = list(pool.map(save, range(64)))
    assert len({r.id for r in saved}) == 64
    assert _count(repo, ResultRow) == before + 64
    assert sum(sizes) == 64 and max(sizes) > 1  # some results were committed together
    for r in saved[:5]:
        again = repo.get_result(r.id)
        assert again is not None and again.payload == r.payload
        with repo.engine.connect() as conn:
            fruit_ids = conn.execute(select(FruitRow.id).where(FruitRow.result_id == r.id)).scalars().all()
        assert fruit_ids == [r.fruits[0].id]


def test_a_retry_in_the_same_group_gets_the_first_result(repo):
    start = threading.Barrier(8)

    def save(i: int) -> ResultRow:
        # four requests carry one idempotency key and one image (a camera retrying), four are different
        rows = _rows(2000 + i, key="cam-1:fruit-9" if i % 2 == 0 else None, image=2000 if i % 2 == 0 else None)
        start.wait()
        return repo.save_result(*rows)

    with ThreadPoolExecutor(8) as pool:
        saved = list(pool.map(save, range(8)))
    retried = {r.id for i, r in enumerate(saved) if i % 2 == 0}
    assert len(retried) == 1  # every attempt answered with the one stored result
    assert len({r.id for i, r in enumerate(saved) if i % 2 == 1}) == 4
    with repo.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(ResultRow).where(ResultRow.idempotency_key == "cam-1:fruit-9")).scalar_one()
    assert n == 1


def test_a_failing_write_is_reported_to_its_own_request_only(repo):
    start = threading.Barrier(6)

    def save(i: int) -> ResultRow:
        img, res, fruits = _rows(3000 + i)
        if i == 3:
            res.image_sha256 = "0" * 64  # refers to no stored image: this one result cannot be written
            img.sha256 = "f" * 64
        start.wait()
        return repo.save_result(img, res, fruits)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(save, i) for i in range(6)]
    outcomes = [f.exception() for f in futures]
    if repo.engine.dialect.name == "sqlite" and not _sqlite_enforces_foreign_keys(repo):
        pytest.skip("this SQLite build does not enforce foreign keys")
    assert outcomes[3] is not None
    assert all(o is None for i, o in enumerate(outcomes) if i != 3)
    assert all(repo.get_result(futures[i].result().id) is not None for i in range(6) if i != 3)


def _sqlite_enforces_foreign_keys(repo: Repository) -> bool:
    with repo.engine.connect() as conn:
        return bool(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
