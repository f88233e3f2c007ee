"""A lean HTTP/1.1 load generator for the grading endpoint: keep-alive connections over asyncio
streams, the multipart body assembled from bytes prepared once.

The benchmark's cameras run on the same two cores as the server, so every millisecond the load
generator spends is taken from the service it measures; a general-purpose client (httpx builds each
multipart body and parses each answer in Python) spends more of it. Cameras on a line are other
machines: this client keeps the benchmark's own share small (bench/serve.py prints it per request)
and sends exactly what a camera sends: `POST /v1/grade` with the photo as a multipart file,
`mm_per_px`, the API key.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

BOUNDARY = b"orchard-grader-bench-7f3a9c"


class _StaleConnection(Exception):
    """The connection closed before any byte of the answer."""


class GradePoster:
    """Posts photos to ``url`` (http://host:port/v1/grade) with ``api_key``; one instance per event loop."""

    def __init__(self, url: str, api_key: str, mm_per_px: str = "0.2") -> None:
        u = urlsplit(url)
        self.host, self.port, self.path = u.hostname or "127.0.0.1", u.port or 80, u.path or "/"
        self.head_fmt = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nX-API-Key: {api_key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\nContent-Length: %d\r\n\r\n"
        ).encode()
        self.prefix = (
            b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="mm_per_px"\r\n\r\n' + mm_per_px.encode() + b"\r\n"
            b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        self.suffix = b"\r\n--" + BOUNDARY + b"--\r\n"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, jpeg: bytes) -> int:
        """Send one photo and wait for the whole answer; its HTTP status. A kept-alive connection
        that the server closed while idle (its keep-alive timeout) is replaced and the photo sent
        again, as HTTP clients do when no byte of an answer came; ConnectionError otherwise."""
        return (await self.post_answer(jpeg))[0]

    async def post_answer(self, jpeg: bytes) -> tuple[int, float | None]:
        """As :meth:`post`: the HTTP status and the answer's ``Retry-After`` in seconds (None when
        absent), which a camera told 503 waits before it sends the photo again."""
        while self.idle:
            try:
                return await self._post_on(*self.idle.pop(), jpeg)
            except _StaleConnection:
                continue
        try:
            return await self._post_on(*await asyncio.open_connection(self.host, self.port), jpeg)
        except _StaleConnection as exc:
            raise ConnectionError(str(exc)) from exc

    async def _post_on(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, jpeg: bytes) -> tuple[int, float | None]:
        try:
            body_len = len(self.prefix) + len(jpeg) + len(self.suffix)
            writer.write(self.head_fmt % body_len + self.prefix)
            writer.write(jpeg)
            writer.write(self.suffix)
            try:
                status_line = await reader.readline()
            except OSError as exc:  # reset before any byte of an answer
                writer.close()
                raise _StaleConnection(str(exc)) from exc
            if not status_line:
                writer.close()
                raise _StaleConnection("connection closed before an answer")
            status = int(status_line.split(b" ", 2)[1])
            length, close, retry_after = 0, False, None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"retry-after":
                    retry_after = float(value)
            if length:
                await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            writer.close()
            raise ConnectionError(str(exc)) from exc
        if close:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, retry_after

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
