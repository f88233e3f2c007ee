"""The short soak CI runs: two service processes sharing the real PostgreSQL, a minute of real
JPEGs at a steady rate, then every request reconciled against the database (bench/soak.py; the
30-minute figures in README come from the same script)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_one_minute_soak_on_two_workers_loses_nothing(tmp_path, pg_url):  # pg_url: skips without PostgreSQL
    out = tmp_path / "soak.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            "--minutes",
            "1",
            "--rate",
            "4",
            "--workers",
            "2",
            "--images",
            "12",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["lost"] == 0 and rec["sent"] == rec["accepted"] + rec["errors"] and rec["sent"] >= 200
    assert rec["accepted"] >= 0.95 * rec["sent"], rec["errors_by_status"]
    assert not rec["crashed_workers"] and rec["tracebacks_in_logs"] == 0
