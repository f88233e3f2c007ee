"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol (a C parser; uvicorn's pure
Python h11 protocol where httptools is not installed) with TCP_NODELAY set on every accepted
connection, a deadline for each request's head, and a count of the bytes read from clients.

With ``--workers N`` uvicorn binds the listening socket itself with ``proto`` 0, accepted sockets
inherit it, and asyncio only turns Nagle's algorithm off for sockets that report IPPROTO_TCP
(uvicorn issue #3149). A response's head and body then leave as two small segments and the second
waits for the client's delayed ACK: about 40 ms added to every keep-alive request on Linux.
Setting the option here makes one worker and several behave the same.

uvicorn closes an idle keep-alive connection, and the gate (service/gate.py) answers a client that
stops sending its body with 408, but nothing ends a connection whose request head never
completes: here a connection that has not sent a whole head within ``head_timeout_s`` of opening
(or of its previous response) is closed.
"""

from __future__ import annotations

import socket

from prometheus_client import Counter

from .metrics import REGISTRY

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools missing: the h11 protocol, slower but the same behaviour
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

BYTES_RECEIVED = Counter(
    "grader_http_bytes_received_total", "bytes read from clients' connections (request heads and bodies)", registry=REGISTRY
)


def set_nodelay(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a socket that cannot take the option still serves, only slower
            pass


class NoDelayHttpProtocol(_Base):
    #: seconds a connection may take to send a whole request head (set from GRADER_BODY_READ_TIMEOUT_S)
    head_timeout_s: float = 15.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self._head_timer = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:  # still waiting for a request head
            if not self.transport.is_closing():
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        BYTES_RECEIVED.inc(len(data))
        if getattr(self, "_head_timer", None) is None and (getattr(self, "cycle", None) is None or self.cycle.response_complete):
            self._arm_head_timer()  # a new request begins on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._cancel_head_timer()  # idle now: uvicorn's keep-alive timeout is in charge

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
