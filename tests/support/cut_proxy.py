"""A TCP proxy on 127.0.0.1 that a test can cut and restore: an outage of a real server, on demand.

::

    with CutProxy(("127.0.0.1", port)) as proxy:   # forwards proxy.port -> port
        client talks to proxy.url
        proxy.cut()        # live connections reset, new ones refused (or "reset", "hang")
        proxy.restore()    # new connections forwarded again, on the same port

For the S3 store: the ``s3_proxy`` fixture sits in front of the ``s3_server`` fixture (import both
into the test module) and carries the store environment with ``AWS_ENDPOINT_URL`` pointing at it.

One thread serves every connection (selectors, no thread per connection). The proxy is bounded in
time: it stops by itself after ``lifetime`` seconds, closing every socket, so a test that forgets it
or hangs cannot leave it running; ``stop()`` (or leaving the ``with`` block) stops it at once.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

CutMode = Literal["refuse", "reset", "hang"]
_CHUNK = 1 << 16


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or unplugged server looks to a client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class CutProxy:
    """Forward TCP connections from ``127.0.0.1:<port>`` to ``target`` until cut.

    Cut modes: ``refuse`` closes the listening socket (connect fails with ECONNREFUSED, as for a
    server that is down); ``reset`` accepts and resets at once (a crashing server or a load balancer
    without backends); ``hang`` accepts and never answers (a network partition: only the client's
    timeouts end it). Every cut resets the connections that were open, so pooled keep-alive
    connections fail too.
    """

    def __init__(self, target: tuple[str, int], *, lifetime: float = 300.0, connect_timeout: float = 5.0):
        self.target = target
        self.lifetime = lifetime
        self.connect_timeout = connect_timeout
        self.port = 0
        self.mode: CutMode | None = None  # None: forwarding
        self.accepted = 0  # connections forwarded
        self.dropped = 0  # connections refused by a reset or held by a hang while cut
        self.env: dict[str, str] = {}  # what a fixture pairs with the proxy (s3_proxy: the store environment)
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._peers: dict[socket.socket, socket.socket] = {}  # each forwarded socket -> the other end
        self._held: list[socket.socket] = []  # accepted while hanging
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the API ---------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target_url(self) -> str:
        """The server behind the proxy, for checks that must not go through the outage."""
        return f"http://{self.target[0]}:{self.target[1]}"

    def start(self) -> CutProxy:
        self._listen()
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name=f"cut-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def cut(self, mode: CutMode = "refuse") -> None:
        """Start an outage; returns once it is in effect (open connections already reset)."""
        if mode not in ("refuse", "reset", "hang"):
            raise ValueError(f"cut mode {mode!r}: use refuse, reset or hang")
        self._call(lambda: self._cut(mode))

    def restore(self) -> None:
        """End the outage: new connections are forwarded again, on the same port."""
        self._call(self._restore)

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the serving thread ----------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # port 0 the first time; the same port on restore
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        if self._thread is not None:  # on restore, from the serving thread
            self._selector.register(listener, selectors.EVENT_READ, "accept")

    def _call(self, command: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the proxy is not running (stopped, or past its lifetime)")
        done = threading.Event()
        self._commands.put((command, done))
        self._wake()
        if not done.wait(timeout=10):
            raise RuntimeError("the proxy did not carry out the command within 10 s")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _serve(self) -> None:
        assert self._listener is not None
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        deadline = time.monotonic() + self.lifetime
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                for key, _events in self._selector.select(timeout=min(0.5, max(deadline - time.monotonic(), 0))):
                    if key.data == "wake":
                        self._wake_read.recv(4096)
                    elif key.data == "accept":
                        self._accept()
                    elif key.fileobj in self._peers:  # not closed by an earlier event of this round
                        self._forward(key.fileobj)  # type: ignore[arg-type]
                self._run_commands()
        finally:
            self._shutdown()

    def _run_commands(self) -> None:
        while True:
            try:
                command, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            finally:
                done.set()

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            client, _address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self.mode == "reset":
            self.dropped += 1
            _reset(client)
            return
        if self.mode == "hang":
            self.dropped += 1
            self._held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            sock.settimeout(self.connect_timeout)  # sendall below waits at most this long for a slow reader
            self._selector.register(sock, selectors.EVENT_READ, "forward")
        self._peers[client], self._peers[upstream] = upstream, client
        self.accepted += 1

    def _forward(self, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(_CHUNK)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        self._close_pair(sock, reset=False)

    def _close_pair(self, sock: socket.socket, *, reset: bool) -> None:
        other = self._peers.pop(sock, None)
        for end in (sock, other):
            if end is None:
                continue
            self._peers.pop(end, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            if reset:
                _reset(end)
            else:
                end.close()

    def _cut(self, mode: CutMode) -> None:
        self.mode = mode
        for sock in list(self._peers):
            self._close_pair(sock, reset=True)
        if mode == "refuse" and self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        elif mode != "refuse" and self._listener is None:  # from refuse to reset or hang: accept again
            self._listen()
        if mode != "hang":
            for sock in self._held:
                _reset(sock)
            self._held.clear()

    def _restore(self) -> None:
        self.mode = None
        for sock in self._held:
            _reset(sock)
        self._held.clear()
        if self._listener is None:
            self._listen()

    def _shutdown(self) -> None:
        for sock in list(self._peers):
            self._close_pair(sock, reset=True)
        for sock in self._held:
            _reset(sock)
        self._held.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()


@pytest.fixture
def s3_proxy(s3_server: dict[str, str]) -> Iterator[CutProxy]:
    """A :class:`CutProxy` in front of the module's moto S3 server; ``proxy.env`` is the store environment.

    Needs the ``s3_server`` fixture in the test module:
    ``from support.fixtures_servers import s3_server  # noqa: F401``.
    """
    host_port = s3_server["AWS_ENDPOINT_URL"].removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    with CutProxy((host, int(port)), lifetime=120.0) as proxy:
        proxy.env = {**s3_server, "AWS_ENDPOINT_URL": proxy.url}
        yield proxy
