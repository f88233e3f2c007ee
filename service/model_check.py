"""Check an uploaded model artifact in a process of its own: `python -m service.model_check DIR`.

ONNX Runtime is native code: a crafted graph could crash it or spin forever, and the service's
process with it (every camera's connection dropped). The upload route has the graph loaded, run
and its parity probe checked here first, under a time limit; only an artifact that passed is
loaded by the service itself. Exit status 0: usable; 3: refused, the reason on stdout (JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grader.errors import InvalidModelArtifact


def check_in_child(artifact_dir: Path, timeout_s: float) -> None:
    """Raise InvalidModelArtifact naming why the artifact cannot serve (also when checking it
    crashed or outran ``timeout_s``)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service.model_check", str(artifact_dir)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise InvalidModelArtifact(f"model.onnx took longer than {timeout_s:g} s to load and run", field="model") from None
    if done.returncode == 0:
        return
    if done.returncode == 3:
        try:
            message = json.loads(done.stdout.strip().splitlines()[-1])["message"]
        except (ValueError, IndexError, KeyError):
            message = "model.onnx cannot be used"
        raise InvalidModelArtifact(message, field="model")
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"status {done.returncode}"
    tail = (done.stderr or "").strip().splitlines()[-1:] or [""]
    raise InvalidModelArtifact(f"model.onnx made ONNX Runtime fail ({how}) while loading and running it: {tail[0][:300]}", field="model")


def main(argv: list[str]) -> int:
    from .onnx_model import OnnxDefectModel

    try:
        OnnxDefectModel(Path(argv[0]), 1).check_parity()
    except InvalidModelArtifact as exc:
        print(json.dumps({"message": exc.message}))
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
