"""Test helpers that play storage failures: a TCP relay on loopback in front of a server, which
can play an outage on demand, and a guard for reads that could block on a FIFO.

Relay modes: ``forward`` passes bytes both ways; ``refuse`` stops listening (connection refused);
``reset`` accepts and resets each connection at once; ``503`` answers every request with
``HTTP/1.1 503 Service Unavailable`` (an S3 ``SlowDown``). Leaving ``forward`` cuts the
connections already open, as a restarting server does, so pooled keep-alive connections die too.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

MODES = ("forward", "refuse", "reset", "503")
SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a crashed peer would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _cut(sock: socket.socket) -> None:
    """Close a socket another thread may be blocked on (``close`` alone would not wake it)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Relay:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.mode = "forward"
        self.answered_503 = 0  # requests answered in 503 mode: counts the client's attempts
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = self._listen(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        with self._lock:
            self.mode = mode
            for sock in self._open:
                _cut(sock)
            self._open.clear()
        if mode == "refuse" and self._listener is not None:
            _cut(self._listener)
            self._listener = None
        elif mode != "refuse" and self._listener is None:
            self._listen(self.port)

    def set_mode_later(self, mode: str, delay_s: float) -> threading.Timer:
        timer = threading.Timer(delay_s, self.set_mode, (mode,))
        timer.start()
        return timer

    def close(self) -> None:
        self.set_mode("refuse")

    def _listen(self, port: int) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: refuse mode or shut down
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        mode = self.mode
        if mode == "reset":
            _reset(client)
        elif mode == "503":
            self._answer_503(client)
        else:
            self._forward(client)

    def _answer_503(self, client: socket.socket) -> None:
        with client:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(65536)
                if not chunk:
                    return
                request += chunk
            head, _, sent = request.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            waits = re.search(rb"(?im)^expect:\s*100-continue", head)  # the body comes only after a "100"
            missing = int(length.group(1)) - len(sent) if length and not waits else 0
            while missing > 0:  # read the body first: closing on unread data would send a reset
                chunk = client.recv(min(missing, 65536))
                if not chunk:
                    return
                missing -= len(chunk)
            with self._lock:  # counted before answering: the client may give up as soon as it reads it
                self.answered_503 += 1
            body = b"" if head.startswith(b"HEAD ") else SLOW_DOWN
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(SLOW_DOWN) + body)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            _reset(client)
            return
        with self._lock:
            if self.mode != "forward":  # an outage began while connecting
                _reset(client)
                upstream.close()
                return
            self._open.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for sock in (src, dst):
                    if sock in self._open:
                        self._open.discard(sock)
                        _cut(sock)


def release(fifo) -> None:
    """Open ``fifo`` for writing and close it: a reader blocked opening it gets through, reads EOF."""
    with contextlib.suppress(OSError):  # ENXIO: nobody is waiting to read right now
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def without_hanging(fn, *fifos, seconds: float = 10.0):
    """``fn()``, failing the test (not hanging it) if it blocks opening one of ``fifos``."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            while not future.done():
                for fifo in fifos:
                    release(fifo)
                time.sleep(0.05)
            pytest.fail("reading blocked on a FIFO")
