"""The server's HTTP protocol turns Nagle's algorithm off on every connection, also where uvicorn's
multi-worker listener leaves ``proto`` at 0 and asyncio would not (uvicorn issue #3149)."""

import asyncio
import socket

from service.http_protocol import NoDelayHttpProtocol, set_nodelay


def test_set_nodelay_on_a_connection_accepted_from_a_proto_0_listener():
    async def main() -> tuple[int, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)  # as uvicorn's Config.bind_socket()
        listener.bind(("127.0.0.1", 0))
        seen: dict[str, int] = {}
        done = asyncio.Event()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                seen["before"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                set_nodelay(transport)
                seen["after"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                transport.close()
                done.set()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        await asyncio.wait_for(done.wait(), 10)
        writer.close()
        server.close()
        return seen["before"], seen["after"]

    before, after = asyncio.run(main())
    assert before == 0  # the premise: asyncio left Nagle on for this socket
    assert after != 0


def test_the_protocol_is_uvicorns_with_the_option_set():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(NoDelayHttpProtocol, HttpToolsProtocol)  # httptools is a dependency: the C parser
