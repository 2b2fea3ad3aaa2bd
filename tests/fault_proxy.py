"""A TCP proxy on 127.0.0.1 that cuts connections mid-request and mid-response, for sync tests.

Each accepted connection is forwarded to the target; by a seeded draw it is passed whole, or
reset (RST, as a dropped network does) once a chosen number of bytes has crossed in one
direction: part of the request reached the server (``cut_request``), or the server's answer
was cut (``cut_response``, so the server did the work and the client never heard).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass
class Faults:
    """Chances that a connection is cut, and how many bytes may cross before the cut."""

    cut_request: float = 0.0
    cut_response: float = 0.0
    max_bytes: int = 4000  # the cut comes after 1..max_bytes bytes of that direction


def _reset(sock: socket.socket) -> None:
    """Drop a connection with RST (SO_LINGER 0), waking a thread blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # a recv() blocked in the other pump returns now
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``target`` with the configured faults."""

    def __init__(self, target: tuple[str, int], faults: Faults | None = None, seed: int = 0):
        self.target = target
        self.faults = faults or Faults()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def _plan(self) -> tuple[str, int]:
        with self._lock:
            r = self._random.random()
            n = self._random.randint(1, self.faults.max_bytes)
        if r < self.faults.cut_request:
            return "cut_request", n
        if r < self.faults.cut_request + self.faults.cut_response:
            return "cut_response", n
        return "pass", 0

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                with self._lock:
                    self.counts["refused"] += 1
                continue
            plan, limit = self._plan()
            with self._lock:
                self.counts[plan] += 1
                self._open.update((client, upstream))
            cut = threading.Event()
            for src, dst, direction in (
                (client, upstream, "request"),
                (upstream, client, "response"),
            ):
                budget = limit if plan == f"cut_{direction}" else None
                threading.Thread(
                    target=self._pump, args=(src, dst, budget, cut, (client, upstream)), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        budget: int | None,
        cut: threading.Event,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        sent = 0
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if cut.is_set():
                    return  # the other direction cut the connection and reset both ends
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if budget is not None and sent + len(data) >= budget:
                    dst.sendall(data[: max(0, budget - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            if cut.is_set():
                return
        cut.set()
        for s in pair:
            _reset(s)
        with self._lock:
            self._open.difference_update(pair)

    def close(self) -> None:
        """Stop accepting and reset every connection still open."""
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self._thread.join(2)
        with self._lock:
            open_now, self._open = list(self._open), set()
        for s in open_now:
            _reset(s)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FaultProxy", "Faults"]
