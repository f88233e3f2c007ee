"""The hostile corpus (tests/hostile_corpus.py) against a real `grader serve` process: every
request gets an answer (no 5xx, no connection dropped without one), each the status its case
names, and afterwards nothing is left outside the data directory or in temporary folders."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from service.process import ServerProcess

from .conftest import API_KEYS, REPO
from .hostile_corpus import cases

pytestmark = pytest.mark.slow


def untracked() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    return set(out.splitlines())


def test_the_hostile_corpus_against_a_real_server(tmp_path):
    pytest.importorskip("onnx")
    work, tmpdir, data_dir = tmp_path / "work", tmp_path / "tmp", tmp_path / "var"
    work.mkdir()
    tmpdir.mkdir()
    corpus = cases(work)
    before = untracked()
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()), "TMPDIR": str(tmpdir), "GRADER_RATE_LIMIT_PER_MIN": "0"}
    failures = []
    with ServerProcess(data_dir, env) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        for case in corpus:
            hdrs = {**case.headers, **({"X-API-Key": API_KEYS[case.role]} if case.role else {})}
            try:
                r = c.request(case.method, case.path, headers=hdrs, files=case.files, data=case.data, content=case.content)
            except httpx.HTTPError as exc:
                failures.append(f"{case.name}: no answer ({type(exc).__name__}: {exc})")
                continue
            if r.status_code >= 500 or r.status_code not in case.expect:
                failures.append(f"{case.name}: {r.status_code} (expected {sorted(case.expect)}): {r.text[:300]}")
            elif r.status_code >= 400 and not r.json()["error"]["message"]:
                failures.append(f"{case.name}: {r.status_code} without a message")
        assert c.get("/readyz").status_code == 200, "the server is still well"
        log = srv.log()
    assert not failures, "\n".join(failures)
    assert "Traceback" not in log, log[-3000:]
    # nothing left in temporary folders: the server's TMPDIR, the data dir's own, half-uploaded models
    assert list(tmpdir.iterdir()) == []
    assert list((data_dir / "tmp").iterdir()) == []
    assert not [p for p in (data_dir / "models").glob(".upload-*")] if (data_dir / "models").exists() else True
    # nothing written outside the data directory: the working tree holds no new file
    assert untracked() - before == set()
    # the data dir holds only the database, keys, the log and content-addressed images
    for p in data_dir.rglob("*"):
        if p.is_file():
            rel = p.relative_to(data_dir)
            assert rel.parts[0] in ("images", "models", "tmp") or rel.name.startswith(("grader.db", "server.log", "api_keys")), rel
            if rel.parts[0] == "images":
                assert len(p.stem) == 64, rel
