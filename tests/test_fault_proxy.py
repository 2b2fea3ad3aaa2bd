"""The sync tests' fault proxy really forwards, and really cuts requests and responses."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.fault_proxy import FaultProxy, Faults

BODY = b"x" * 50_000


class _Handler(BaseHTTPRequestHandler):
    seen: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        n = int(self.headers["Content-Length"])
        data = self.rfile.read(n)
        _Handler.seen.append(len(data))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def target():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Handler.seen = []
    yield server.server_address
    server.shutdown()
    server.server_close()


def _post(url: str) -> requests.Response:
    return requests.post(url + "/", data=b"y" * 20_000, timeout=5)


def test_passes_everything_when_asked_to(target):
    with FaultProxy(target) as proxy:
        for _ in range(5):
            assert _post(proxy.url).content == BODY
        assert proxy.counts["pass"] == 5


def test_a_cut_response_reaches_the_server_but_not_the_client(target):
    with FaultProxy(target, Faults(cut_response=1.0, max_bytes=1000)) as proxy:
        with pytest.raises(requests.RequestException):
            _post(proxy.url)
        assert _Handler.seen == [20_000]  # the server did the work
        assert proxy.counts["cut_response"] == 1


def test_a_cut_request_never_reaches_the_server_whole(target):
    with FaultProxy(target, Faults(cut_request=1.0, max_bytes=5000)) as proxy:
        with pytest.raises(requests.RequestException):
            _post(proxy.url)
        assert _Handler.seen == []
        assert proxy.counts["cut_request"] == 1
