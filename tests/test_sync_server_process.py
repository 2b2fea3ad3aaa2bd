"""The real ``hwr-sync-server``: serve on port 0, the CLI beside it, the notify socket, start-up errors."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket

from hwrcore import release as rel
from tests import versions
from tests.sync_server_helpers import MODELS_DIR, item, new_version

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "hwr-sync-server"
ADMIN = "process-admin-token"
pytestmark = pytest.mark.slow


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("HWR_SYNC_")}
    e["HWR_SYNC_ADMIN_TOKEN"] = ADMIN
    e["HWR_SYNC_MODELS_DIR"] = str(MODELS_DIR)
    e.update({f"HWR_SYNC_{k.upper()}": v for k, v in extra.items()})
    return e


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one hwr-sync-server subcommand against ``data_dir``."""
    proc = subprocess.run(
        [str(CLI), *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


class Server:
    """``hwr-sync-server serve --port 0`` and the URL it printed."""

    def __init__(self, data_dir: Path, *args: str, **settings: str):
        self.log = open(data_dir.parent / "server.log", "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [str(CLI), "serve", "--port", "0", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env(**settings),
        )
        line = self.proc.stdout.readline()
        m = re.search(r"serving (http://\S+/)", line)
        if not m:
            self.stop()
            raise AssertionError(f"no URL printed: {line!r}")
        self.url = m.group(1).rstrip("/")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/v1/models", timeout=2).status_code == 401:
                    return
            except requests.RequestException:  # not listening yet, or too busy to answer
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not answer within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def server(tmp_path: Path):
    s = Server(tmp_path / "data")
    yield s
    s.stop()


def test_cli_token_works_and_a_publish_reaches_the_notify_socket(server, tmp_path):
    data = tmp_path / "data"
    added = cli(data, "add-device", "room-1", "--group", "class-3")
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) == 43 and token not in added.stderr
    h = {"Authorization": f"Bearer {token}"}
    r = requests.get(server.url + "/api/v1/models", headers=h, timeout=5)
    assert r.status_code == 200 and set(r.json()["models"]) == {"digit", "char"}
    key = rel.load_public_key(cli(data, "public-key").stdout.strip().splitlines()[-1])
    rel.verify_release(r.json()["models"]["digit"]["release"], key, mode="digit")

    up = requests.post(
        server.url + "/api/v1/corrections", json={"corrections": [item()]}, headers=h
    )
    assert up.json()["results"][0]["status"] == "stored"

    ws = websocket.create_connection(
        server.url.replace("http://", "ws://") + "/api/v1/notify",
        header=[f"Authorization: Bearer {token}"],
        timeout=5,
    )
    try:
        first = [json.loads(ws.recv()) for _ in range(2)]
        assert {(m["name"], m["sequence"]) for m in first} == {("digits", 1), ("characters", 1)}
        cli(data, "publish", str(new_version(tmp_path / "new")))
        published = time.monotonic()
        ws.settimeout(2.0)
        notice = json.loads(ws.recv())
        assert time.monotonic() - published < 2.0
        assert notice == {
            "type": "release",
            "mode": "digit",
            "name": "digits",
            "version": versions.digits(1),
            "sequence": 2,
        }
        cli(data, "rollback", "digits", versions.digits())
        assert json.loads(ws.recv())["version"] == versions.digits()
    finally:
        ws.close()
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Authorization": "Bearer wrong",
    }
    refused = requests.get(server.url + "/api/v1/notify", headers=upgrade, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    listed = cli(data, "models").stdout
    assert (
        re.search(rf"^\* digits\t{re.escape(versions.digits())}", listed, re.M)
        and versions.digits(1) in listed
    )
    cli(data, "revoke-device", "room-1")
    assert requests.get(server.url + "/api/v1/models", headers=h, timeout=5).status_code == 401
    assert "room-1\tclass-3\trevoked" in cli(data, "devices").stdout
    s = requests.get(
        server.url + "/api/v1/admin/summary", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert s.json() == {"devices": 1, "corrections": {"digit": 1, "char": 0}}


def test_revoking_a_device_or_replacing_its_token_closes_its_open_notify_socket(server, tmp_path):
    """A device revoked (a) or given a new token (c) while its notify socket is open hears of no
    later release on it: the socket says unauthorized and closes, before the next notice and
    within seconds without one. The new token works; the replaced one gets 401."""
    data = tmp_path / "data"
    tokens = [cli(data, "add-device", n).stdout.strip().splitlines()[-1] for n in ("a", "b", "c")]
    url = server.url.replace("http://", "ws://") + "/api/v1/notify"
    a, b, c = (
        websocket.create_connection(url, header=[f"Authorization: Bearer {t}"], timeout=5)
        for t in tokens
    )
    try:
        for ws in (a, b, c):
            assert {json.loads(ws.recv())["name"] for _ in range(2)} == {"digits", "characters"}
        cli(data, "revoke-device", "a")
        replaced = cli(data, "new-token", "c").stdout.strip().splitlines()
        assert "shown this once" in replaced[0] and len(replaced[-1]) == 43
        cli(data, "publish", str(new_version(tmp_path / "new")))
        assert json.loads(b.recv())["version"] == versions.digits(1)  # b is still enrolled
        for ws in (a, c):
            ws.settimeout(10)
            told = json.loads(ws.recv())
            assert told["error"]["code"] == "unauthorized", told
            op, frame = ws.recv_data(control_frame=True)
            assert op == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame[:2], "big") == 1008
        models = server.url + "/api/v1/models"
        for token, status in ((tokens[2], 401), (replaced[-1], 200)):
            r = requests.get(models, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            assert r.status_code == status, r.text
    finally:
        for ws in (a, b, c):
            ws.shutdown()  # the server may have closed it already: no close frame to send


def test_the_servers_files_are_its_users_alone(server, tmp_path):
    """The database holds every pupil's drawing: other local users cannot read it."""
    data = tmp_path / "data"
    cli(data, "add-device", "d")
    made = [data, data / "sync.db", *data.glob("sync.db-*"), data / "jobs.db"]
    for path in [p for p in made if p.exists()]:
        assert path.stat().st_mode & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"
    assert (data / "sync.db").exists()


def test_init_is_private_and_serve_mends_a_school_left_readable(tmp_path):
    """The README's order (init, then serve) under a umask of 022 leaves nothing readable by
    other users; a school whose files were left readable is mended when the server starts."""
    data = tmp_path / "data"
    old = os.umask(0o022)
    try:
        cli(data, "init")
    finally:
        os.umask(old)
    made = [data, data / "sync.db", *data.glob("sync.db-*"), data / "signing_key.pem"]
    for path in made:
        assert path.stat().st_mode & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"
    data.chmod(0o755)
    (data / "sync.db").chmod(0o644)
    s = Server(data)
    try:
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / "sync.db").stat().st_mode & 0o777 == 0o600
        assert (data / "tunnel.json").stat().st_mode & 0o777 == 0o600  # serve's own file too
    finally:
        s.stop()
    log = (tmp_path / "server.log").read_text()
    assert "was readable by other users; now its user's alone" in log
    assert "sync.db 0644" in log


def test_a_second_server_on_the_same_folder_is_refused(server, tmp_path):
    data = tmp_path / "data"
    second = cli(data, "serve", "--port", "0", check=False)
    assert second.returncode == 2 and "serving" not in second.stdout
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr  # the refusal alone
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hwr-sync-server: another hwr-sync-server serves {data} already (pid ")
    assert f"(pid {server.proc.pid})" in last
    assert requests.get(server.url + "/api/v1/models", timeout=5).status_code == 401  # still up


def test_forwarded_headers_are_not_believed_without_proxy_hops(server):
    r = requests.get(
        server.url + "/admin/signin", headers={"X-Forwarded-Proto": "https"}, timeout=5
    )
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" not in cookie, cookie


def test_over_1_mib_is_answered_413_over_real_http(server, tmp_path):
    token = cli(tmp_path / "data", "add-device", "d").stdout.strip().splitlines()[-1]
    body = json.dumps({"corrections": [item()], "pad": "x" * (1 << 20)})
    r = requests.post(
        server.url + "/api/v1/corrections",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # The same body sent chunked (no Content-Length) is refused the same way.
    chunks = (body[i : i + 65536].encode() for i in range(0, len(body), 65536))
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request(
            "POST",
            "/api/v1/corrections",
            body=chunks,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "too_large"
    finally:
        conn.close()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_the_dashboard_publishes_a_model_over_the_body_limit_of_the_device_api(server, tmp_path):
    """The letters model is 1.9 MB, past the 1 MiB every other request is held to: its upload
    is read by the app, after the session is checked; without one it is refused unread."""
    manifest = new_version(tmp_path / "upload", versions.characters(1), name="characters")
    model = manifest.with_name(json.loads(manifest.read_text())["file"])
    assert model.stat().st_size > 1 << 20
    files = {
        "manifest": (manifest.name, manifest.read_bytes()),
        "model": (model.name, model.read_bytes()),
    }
    anonymous = requests.post(server.url + "/admin/models/publish", files=files, timeout=30)
    assert anonymous.status_code == 401
    s = requests.Session()
    page = s.get(server.url + "/admin/signin", timeout=10).text
    r = s.post(
        server.url + "/admin/signin",
        data={"csrf_token": _csrf(page), "token": ADMIN, "name": "Ms Rivera"},
        timeout=10,
    )
    assert r.status_code == 200 and "Signed in as" in r.text
    csrf = _csrf(s.get(server.url + "/admin/models", timeout=10).text)
    r = s.post(
        server.url + "/admin/models/publish",
        data={"csrf_token": csrf},
        files=files,
        timeout=60,
    )
    assert r.status_code == 200 and r.url.endswith("/admin/models"), r.text[:300]
    assert f"characters {versions.characters(1)} is published and current" in r.text
    r = s.post(server.url + "/api/v1/heartbeat", json={"pad": "x" * (2 << 20)}, timeout=30)
    assert r.status_code == 413  # every other path keeps the limit


def test_half_sent_requests_hold_no_thread_and_are_cut_off(tmp_path):
    """Clients that send half a request and stop (slowloris) take no thread from the devices,
    are cut off after request_timeout, and gunicorn's own refusals carry the one error body."""
    timeout = 4.0
    s = Server(
        tmp_path / "data", workers="1", threads="4", request_timeout=str(timeout), start_worker="0"
    )
    token = cli(tmp_path / "data", "add-device", "d").stdout.strip().splitlines()[-1]
    port = int(s.url.rsplit(":", 1)[1])
    held = []
    try:
        t0 = time.monotonic()
        for _ in range(40):  # ten times the threads there are
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(c)
        time.sleep(0.3)
        r = requests.post(
            s.url + "/api/v1/heartbeat",
            json={},
            headers={"Authorization": f"Bearer {token}"},
            timeout=3,
        )
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < timeout
        for raw_request, status, code in (
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(raw_request)
                head, _, body = c.recv(65536).partition(b"\r\n\r\n")
            assert head.startswith(f"HTTP/1.1 {status}".encode()), head
            assert json.loads(body)["error"]["code"] == code
        for c in held:  # each is answered 408 and closed once its time is up
            c.settimeout(timeout + 3)
            answer = c.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    finally:
        for c in held:
            c.close()
        s.stop()


def test_a_loose_key_file_mode_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    cli(data, "init")  # makes the key
    key = data / "signing_key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    for args in (["serve", "--port", "0"], ["public-key"]):
        proc = cli(data, *args, check=False)
        assert proc.returncode == 2
        last = proc.stderr.strip().splitlines()[-1]  # after the effective config, for serve
        assert last.startswith("hwr-sync-server: ") and "0644" in last and "chmod 600" in last
        assert "Traceback" not in proc.stderr


def test_a_job_queue_that_cannot_be_opened_refuses_to_start_before_serving(tmp_path):
    data = tmp_path / "data"
    cli(data, "init")
    (data / "jobs.db").mkdir()  # not a file SQLite can open
    for args in (["serve", "--port", "0"], ["worker"]):
        proc = cli(data, *args, check=False)
        assert proc.returncode == 2 and "serving" not in proc.stdout, proc.stdout
        lines = [line for line in proc.stderr.strip().splitlines() if "hwr-sync-server:" in line]
        assert lines == [
            f"hwr-sync-server: cannot open the job queue {data / 'jobs.db'}: "
            "unable to open database file"
        ], proc.stderr


def test_only_init_and_serve_make_a_school(tmp_path):
    """An admin command pointed at a directory with no school (a forgotten --data-dir) is refused
    and leaves nothing there; ``init`` makes the school and prints the key ``public-key`` prints."""
    data = tmp_path / "data"
    for args in (["add-device", "room-1"], ["public-key"], ["devices"], ["jobs"], ["worker"]):
        proc = cli(data, *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert "holds no school's server" in last and "--data-dir" in last, last
        assert "Traceback" not in proc.stderr
        assert not data.exists() or not any(data.iterdir()), list(data.iterdir())
    made = cli(data, "init").stdout.strip().splitlines()
    assert made[0].startswith("a new school in ")
    assert made[-1] == cli(data, "public-key").stdout.strip().splitlines()[-1]
    again = cli(data, "init").stdout.strip().splitlines()
    assert again[0].startswith("the school already in ") and again[-1] == made[-1]
    cli(data, "add-device", "room-1")
    assert cli(data, "devices").stdout.startswith("room-1\t")


def test_a_listing_into_a_closed_pipe_ends_quietly(tmp_path):
    """``hwr-sync-server devices | head -0``: no traceback, no error line, not status 0."""
    data = tmp_path / "data"
    cli(data, "init")
    cli(data, "add-device", "room-1")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [str(CLI), "devices", "--data-dir", str(data)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


def test_domain_errors_are_one_line_and_status_2(tmp_path):
    data = tmp_path / "data"
    cli(data, "init")
    cases = [
        ["publish", str(tmp_path / "missing.json")],
        ["rollback", "digits", "0.0.1"],
        ["revoke-device", "nobody"],
        ["add-device", "bad name!"],
    ]
    for args in cases:
        proc = cli(data, *args, check=False)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    proc = cli(data, "devices", "--config", str(bad), check=False)
    assert proc.returncode == 2 and "unknown setting 'prot'" in proc.stderr


def test_the_server_never_imports_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from sync_server.app import create_app, close_app\n"
        "from sync_server.config import load_config\n"
        f"app = create_app(load_config(overrides={{'data_dir': {str(tmp_path)!r}}}))\n"
        "c = app.test_client(); assert c.get('/api/v1/models').status_code == 401\n"
        "close_app(app)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
