"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol (a C parser; uvicorn's pure
Python h11 protocol where httptools is not installed) with TCP_NODELAY set on every accepted
connection.

With ``--workers N`` uvicorn binds the listening socket itself with ``proto`` 0, accepted sockets
inherit it, and asyncio only turns Nagle's algorithm off for sockets that report IPPROTO_TCP
(uvicorn issue #3149). A response's head and body then leave as two small segments and the second
waits for the client's delayed ACK: about 40 ms added to every keep-alive request on Linux.
Setting the option here makes one worker and several behave the same.
"""

from __future__ import annotations

import socket

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools missing: the h11 protocol, slower but the same behaviour
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


def set_nodelay(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a socket that cannot take the option still serves, only slower
            pass


class NoDelayHttpProtocol(_Base):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
