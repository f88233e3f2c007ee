"""`grader serve --workers N`: N server processes, each with its own listening socket on the same
port (SO_REUSEPORT), so the kernel spreads connections evenly over them.

uvicorn's own ``--workers`` shares one listening socket between its processes. Cameras keep their
connections open, and connections that arrive together (a line starting, a load generator) are
all accepted by whichever process wakes first (asyncio accepts up to 100 per wakeup): measured on
2 cores, all 8 camera connections landed on one process while the other idled. With a socket per
process the kernel hashes each new connection to one of them.

The supervisor restarts a worker that dies and, on SIGTERM or SIGINT, passes the signal on and
waits for every worker's graceful shutdown (requests in progress finish, nothing accepted is lost).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time

log = logging.getLogger("grader.workers")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket on host:port that other processes may bind too (SO_REUSEPORT)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    import uvicorn

    from service.server_options import server_options
    from service.settings import Settings

    config = uvicorn.Config("service.app:app_from_env", log_level=log_level, **server_options(Settings()))
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def serve_workers(n: int, host: str, port: int, log_level: str = "info") -> int:
    """Run n worker processes until SIGTERM/SIGINT; returns the exit status."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("--workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS)")
    listening_socket(host, port).close()  # fail here, once, if the port is taken
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start(i: int) -> multiprocessing.process.BaseProcess:
        p = ctx.Process(target=_worker, args=(host, port, log_level), name=f"grader-worker-{i}", daemon=False)
        p.start()
        return p

    procs = [start(i) for i in range(n)]

    def stop(signum, _frame) -> None:
        stopping.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.wait(0.5):
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping.is_set():
                log.warning("worker %s (pid %s) exited with %s: starting another", p.name, p.pid, p.exitcode)
                print(f"grader: worker {p.name} (pid {p.pid}) exited with {p.exitcode}; starting another", flush=True)
                time.sleep(0.5)  # a worker that dies at once must not spin the supervisor
                procs[i] = start(i)
    deadline = time.monotonic() + 30
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    return 0 if all(p.exitcode in (0, -signal.SIGTERM) for p in procs) else 1
