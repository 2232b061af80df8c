"""Fault injection for tests: a loopback TCP relay in front of a real server that a test
can cut (every open connection closed, new ones refused) and restore.

A service that is down looks like this to a client: connections refused, the open ones
reset. Stopping the machine's shared PostgreSQL or Redis would break every other test
running beside this one, so the relay stands in for the outage. (Toxiproxy does this and
more, but it is a Go server the test machines do not have; this is about fifty lines.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class Relay:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` makes the service "down"."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this relay's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()  # stalled: bytes are held, as by a stopped process
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._open.discard(sock)

    def cut(self) -> None:
        """The service goes away: the port refuses connections, open ones are reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            doomed = list(self._open)
        if listener is not None:
            # shutdown wakes the thread blocked in accept() (close alone does not on Linux)
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        """The service hangs (SIGSTOP, a full disk): connections open, nothing answers."""
        self._flowing.clear()

    def restore(self) -> None:
        """The service is back on the same port."""
        self._flowing.set()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._flowing.set()
        self.cut()


@contextlib.contextmanager
def relay_to(url: str) -> Iterator[Relay]:
    """A relay in front of the server of ``url`` (postgresql://..., redis://...)."""
    parts = urlsplit(url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 0)
    try:
        yield relay
    finally:
        relay.close()
