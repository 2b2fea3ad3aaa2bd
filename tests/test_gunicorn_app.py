"""The gunicorn application both servers run (hwrcore/gunicorn_app.py), in real processes."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from tests.sync_harness import ROOT

SERVER = """
import sys
from hwrcore.errors import HwrError
from hwrcore.gunicorn_app import ServedApp
from hwrcore.serving import bind, url_of

FAIL = sys.argv[1] == "fail"


class Held(HwrError):
    code = "cannot_start"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class App(ServedApp):
    def settings(self):
        return {"workers": 2, "loglevel": "info", "errorlog": "-", "accesslog": None}

    def make_app(self):
        if FAIL:
            raise Held("the store is held by another process")
        return hello


sock = bind("127.0.0.1", 0)
lines = (f"test: serving {url_of(sock)}",)
app = App(sock.detach(), lines)
try:
    app.run()
except SystemExit:
    if app.boot_failure.reason is not None:
        print(f"test: {app.boot_failure.reason}", file=sys.stderr)
        sys.exit(2)
    raise
"""


def _start(mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SERVER, mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_workers_that_cannot_make_the_app_end_the_server_with_one_line():
    """Both workers fail: the master stops at the first, the reason is the last line, nothing
    says "serving", and gunicorn's halt raising again for the second worker is no traceback."""
    proc = _start("fail")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert out == ""
    assert err.strip().splitlines()[-1] == "test: the store is held by another process"
    assert "Traceback" not in err and "Worker failed to boot" not in err, err


def test_the_ready_lines_are_printed_once_when_a_worker_answers():
    proc = _start("ok")
    try:
        line = proc.stdout.readline()
        assert line.startswith("test: serving http://127.0.0.1:"), line
        url = line.split()[-1]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"hello"
        time.sleep(1.0)  # the second worker is up by now; it prints nothing
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "serving" not in out, out
