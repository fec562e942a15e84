"""A local TLS listener that completes handshakes (and closes): a reachable HTTPS receiver for a
target's probe, under a throwaway CA (``ca_file``)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.throwaway_tls import make_throwaway_tls


@contextmanager
def tls_listener(directory: Path) -> Iterator[tuple[int, Path]]:
    """(port on 127.0.0.1 answering TLS for "localhost", the CA file that verifies it)."""
    ca_pem, key_and_chain = make_throwaway_tls({"localhost", "127.0.0.1"})
    ca_file, chain_file = directory / "listener-ca.pem", directory / "listener.pem"
    ca_file.write_text(ca_pem)
    chain_file.write_text(key_and_chain)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, name="tls-listener", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], ca_file
    finally:
        stopped.set()
        thread.join(5)
        server.close()
