"""The benchmark's load generator (bench/httpload.py) speaks to a real `grader serve` as a camera
does, and survives the server closing an idle kept-alive connection."""

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

from datasets.synthetic import make_fruit_image

from .conftest import API_KEYS, jpeg_bytes
from .test_server_process import free_port, start

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from httpload import GradePoster  # noqa: E402

pytestmark = pytest.mark.slow


def test_grade_poster_posts_photos_and_reconnects_after_the_keep_alive_timeout(tmp_path, monkeypatch):
    opened = []
    open_connection = asyncio.open_connection

    async def counted(*a, **k):
        opened.append(a)
        return await open_connection(*a, **k)

    monkeypatch.setattr(asyncio, "open_connection", counted)
    port = free_port()
    proc = start(tmp_path, port)
    try:
        photos = [jpeg_bytes(make_fruit_image(seed=s, diameter_mm=70, mm_per_px=0.25)[0]) for s in (1, 2)]

        async def camera() -> list[int]:
            poster = GradePoster(f"http://127.0.0.1:{port}/v1/grade", API_KEYS["camera"], mm_per_px="0.25")
            statuses = [await poster.post(photos[0])]
            assert len(poster.idle) == 1  # kept alive for the next photo
            time.sleep(6)  # past uvicorn's 5 s keep-alive: the server closes the idle connection
            statuses.append(await poster.post(photos[1]))
            poster.close()
            return statuses

        assert asyncio.run(camera()) == [200, 200]
        assert len(opened) == 2  # the closed connection was noticed and replaced
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/results", headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10).json()
        items = listed["items"] if isinstance(listed, dict) else listed
        assert len(items) == 2
        assert {round(f["diameter_mm"]) for r in items for f in r["fruits"]} == {70}
    finally:
        proc.stop()


def test_grade_poster_reads_the_retry_after_of_a_refusal():
    """A camera told 503 learns how long to wait (bench/serve.py's cameras then wait that long)."""
    answers = [
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ]

    async def scenario() -> list[tuple[int, float | None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        poster = GradePoster(f"http://127.0.0.1:{port}/v1/grade", "key")
        got = [await poster.post_answer(b"\xff\xd8photo"), await poster.post_answer(b"\xff\xd8photo")]
        poster.close()
        server.close()
        await server.wait_closed()
        return got

    assert asyncio.run(scenario()) == [(503, 1.0), (200, None)]
