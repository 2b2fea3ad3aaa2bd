"""``hwr-edge --tunnel`` and ``hwr-sync-server serve --tunnel``: real processes, the real pyngrok
code path, and tests/fake_ngrok.py as the agent (named by the ngrok_path setting)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import websocket

from edge.viewer_auth import FAILS_PER_CLIENT
from tests.test_edge_process import HWR_EDGE, Edge, edge_models

pytest.importorskip("pyngrok")
pytestmark = pytest.mark.slow

FAKE = Path(__file__).resolve().parent / "fake_ngrok.py"
NGROK_TOKEN = "2fakeNGROKtoken_" + "7" * 20
VIEWER_TOKEN = "viewer-token-for-the-tests-0123"
URL = re.compile(r"^https://[0-9a-f]{12}\.ngrok-free\.app$")
SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]
OFFLINE = "ngrok tunnel not opened: cannot reach the ngrok service (offline?); serving locally only"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


class Agent:
    """The fake ngrok on disk and what it recorded."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "ngrok"
        self.path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
        self.path.chmod(0o755)
        self.record = folder / "record.jsonl"

    def env(self, mode: str = "ok") -> dict[str, str]:
        return {
            "FAKE_NGROK_RECORD": str(self.record),
            "FAKE_NGROK_MODE": mode,
            "NGROK_AUTHTOKEN": NGROK_TOKEN,
            "PYNGROK_NGROK_PATH": "",
        }

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [r for r in rows if kind is None or r["event"] == kind]


def edge_config(folder: Path, agent: Agent, **extra: object) -> Path:
    settings = {"ngrok_path": str(agent.path), "tunnel_timeout": 5.0, **extra}
    path = folder / "edge.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return path


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.fixture(scope="module")
def tunnelled(tmp_path_factory):
    """One hwr-edge --tunnel with the viewer token set, its tunnel open, and its agent."""
    edge_models()
    work = tmp_path_factory.mktemp("tunnelled")
    agent = Agent(work / "agent")
    config = edge_config(work, agent)
    env = {**agent.env(), "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN}
    edge = Edge(work / "data", "--config", str(config), "--tunnel", env=env)
    try:
        tunnel = wait_for(
            lambda: (t := edge.health()["tunnel"])["state"] != "starting" and t,
            15,
            "the tunnel did not settle",
        )
        assert tunnel["state"] == "open", (tunnel, edge.log_path.read_text())
        yield edge, agent, tunnel
    finally:
        edge.stop()


def remote(edge: Edge, tunnel: dict) -> tuple[str, dict]:
    """The device's address and the headers of a request that came through the tunnel."""
    host = urlsplit(tunnel["url"]).netloc
    return edge.url, {"Host": host, "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}


def test_the_public_url_is_in_healthz_and_the_token_stays_off_argv_and_the_log(tunnelled):
    edge, agent, tunnel = tunnelled
    assert URL.match(tunnel["url"]) and tunnel["error"] is None
    assert tunnel["viewer_url"] == tunnel["url"] + "/viewer"
    (started,) = agent.events("start")
    assert NGROK_TOKEN not in " ".join(started["argv"]) and started["authtoken"] == NGROK_TOKEN
    (post,) = [e for e in agent.events("request") if e["method"] == "POST"]
    assert post["body"]["upstream"] == {"url": f"http://127.0.0.1:{urlsplit(edge.url).port}"}
    log = edge.log_path.read_text()
    assert f"remote viewer: {tunnel['url']}/viewer" in log
    assert NGROK_TOKEN not in log and VIEWER_TOKEN not in log


def test_through_the_tunnel_only_the_viewer_answers(tunnelled):
    edge, _, tunnel = tunnelled
    base, headers = remote(edge, tunnel)
    before = edge.health()["corrections"]
    writes = {
        "/api/predict": {"mode": "digit", "strokes": SEVEN},
        "/api/correct": {"mode": "digit", "strokes": SEVEN, "label": "7"},
        "/predict": {"mode": "digit", "image": "iVBORw0KGgo="},
        "/correct": {"mode": "digit", "image": "iVBORw0KGgo=", "label": "7"},
    }
    origin = {**headers, "Origin": tunnel["url"]}
    for path, body in writes.items():
        resp = requests.post(base + path.lstrip("/"), json=body, headers=origin, timeout=10)
        assert resp.status_code == 403, (path, resp.text)
        assert resp.json()["error"]["code"] == "remote_only_viewer"
    for path in ("", "healthz", "static/app.js", "static/connection.js", "nothing-here"):
        resp = requests.get(base + path, headers=headers, timeout=10)
        assert resp.status_code == 403, (path, resp.status_code)
        assert resp.json()["error"]["code"] == "remote_only_viewer"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            edge.ws_url, header=[f"{k}: {v}" for k, v in headers.items() if k != "Host"],
            host=headers["Host"], origin=tunnel["url"], timeout=10,
        )  # fmt: skip
    assert refused.value.status_code == 403
    # Behind a proxy header the Host alone does not make a request local.
    resp = requests.post(
        base + "api/predict",
        json=writes["/api/predict"],
        headers={"X-Forwarded-For": "203.0.113.9"},
        timeout=10,
    )
    assert resp.status_code == 403
    assert edge.health()["corrections"] == before

    page = requests.get(base + "viewer", headers=headers, timeout=10)
    assert page.status_code == 200 and "viewer.js" in page.text
    assert requests.get(base + "viewer/static/viewer.js", headers=headers).status_code == 200
    assert requests.get(base + "viewer/static/app.js", headers=headers).status_code == 404
    wrong = requests.post(
        base + "viewer/signin", json={"token": "not-it"}, headers=origin, timeout=10
    )
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
    ok = requests.post(
        base + "viewer/signin", json={"token": VIEWER_TOKEN}, headers=origin, timeout=10
    )
    assert ok.status_code == 200
    cookie = ok.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/viewer", "Secure"):
        assert attribute in cookie, cookie
    sid = ok.cookies["hwr_viewer"]
    ws = websocket.create_connection(
        edge.url.replace("http", "ws", 1) + "viewer/ws",
        host=headers["Host"],
        origin=tunnel["url"],
        header=[f"Cookie: hwr_viewer={sid}", "X-Forwarded-For: 203.0.113.9"],
        timeout=10,
    )
    try:
        assert json.loads(ws.recv())["type"] == "snapshot"
    finally:
        ws.close()


def test_wrong_tokens_through_the_tunnel_lock_out_their_sender_only(tunnelled):
    """Someone on the internet sending wrong viewer tokens waits; a teacher elsewhere, and one
    in the classroom, still sign in."""
    edge, _, tunnel = tunnelled
    base, headers = remote(edge, tunnel)
    origin = {**headers, "Origin": tunnel["url"]}

    def sign_in(token: str, **more: str) -> requests.Response:
        return requests.post(
            base + "viewer/signin", json={"token": token}, headers={**origin, **more}, timeout=10
        )

    attacker = {"X-Forwarded-For": "203.0.113.66"}
    codes = [sign_in("not-it-at-all", **attacker).status_code for _ in range(FAILS_PER_CLIENT)]
    assert codes == [401] * FAILS_PER_CLIENT
    locked = sign_in(VIEWER_TOKEN, **attacker)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert locked.json()["error"]["code"] == "rate_limited"
    # the agent appends the address it saw: a hop the sender adds before it changes nothing
    assert (
        sign_in(VIEWER_TOKEN, **{"X-Forwarded-For": "198.51.100.1, 203.0.113.66"}).status_code
        == 429
    )
    assert sign_in(VIEWER_TOKEN, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    local = requests.post(
        edge.url + "viewer/signin",
        json={"token": VIEWER_TOKEN},
        headers={"Origin": edge.url.rstrip("/")},
        timeout=10,
    )
    assert local.status_code == 200, local.text


def test_shutdown_closes_the_tunnel_and_kills_the_agent(tmp_path):
    edge_models()
    agent = Agent(tmp_path / "agent")
    env = {**agent.env(), "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN}
    edge = Edge(
        tmp_path / "data", "--config", str(edge_config(tmp_path, agent)), "--tunnel", env=env
    )
    try:
        wait_for(lambda: edge.health()["tunnel"]["state"] == "open", 15, "no open tunnel")
        (started,) = agent.events("start")
        assert alive(started["pid"])
    finally:
        code = edge.stop()
    assert code == 0
    wait_for(lambda: not alive(started["pid"]), 5, "the ngrok agent outlived hwr-edge")
    assert [e["method"] for e in agent.events("request")] == ["POST", "DELETE"]


def test_a_killed_worker_s_agent_is_stopped_by_the_next_worker(tmp_path):
    """A worker SIGKILLed (out of memory, say) cannot stop its agent: the worker gunicorn forks
    in its place does, before it starts its own, so the account's agent session is free again
    and the agent's private config (with the token) does not stay behind."""
    edge_models()
    agent = Agent(tmp_path / "agent")
    env = {**agent.env(), "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN, "FAKE_NGROK_OUTLIVE_PARENT": "1"}
    edge = Edge(
        tmp_path / "data", "--config", str(edge_config(tmp_path, agent)), "--tunnel", env=env
    )
    first = second = None
    try:
        wait_for(lambda: edge.health()["tunnel"]["state"] == "open", 15, "no open tunnel")
        (first,) = agent.events("start")
        worker = [p for p in children(edge.proc.pid) if p != first["pid"]][0]
        os.kill(worker, 9)
        wait_for(lambda: len(agent.events("start")) == 2, 60, "no second agent started")
        second = agent.events("start")[1]
        assert not alive(first["pid"]), "the killed worker's agent still runs"
        assert not Path(first["config_path"]).exists()
        tunnel = wait_for(
            lambda: (t := edge.health()["tunnel"])["state"] != "starting" and t, 15, "no tunnel"
        )
        assert tunnel["state"] == "open" and alive(second["pid"]), tunnel
        edge.stop()
        wait_for(lambda: not alive(second["pid"]), 5, "the ngrok agent outlived hwr-edge")
        assert (
            "stopped the ngrok agent a previous process left running" in edge.log_path.read_text()
        )
    finally:
        edge.stop()
        for started in (first, second):  # the fake agents stay orphaned like the real one
            if started is not None and alive(started["pid"]):
                os.kill(started["pid"], 9)
    assert not (tmp_path / "data" / "ngrok.pid").exists()


def run_edge(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HWR_EDGE), "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--models-dir", str(edge_models()), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_no_viewer_token_or_no_ngrok_token_refuses_to_start_with_one_line(tmp_path):
    agent = Agent(tmp_path / "agent")
    config = edge_config(tmp_path, agent)
    env = agent.env()
    env["HWR_EDGE_VIEWER_TOKEN"] = ""
    out = run_edge(tmp_path, "--config", str(config), "--tunnel", env=env)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("hwr-edge: ngrok tunnel refused: the edge viewer (no viewer_token")
    env = {**agent.env(), "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN, "NGROK_AUTHTOKEN": ""}
    out = run_edge(tmp_path, "--config", str(config), "--tunnel", env=env)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line == (
        "hwr-edge: ngrok tunnel refused: no auth token; set NGROK_AUTHTOKEN or name a token "
        "file in the config"
    )
    env["HWR_EDGE_VIEWER_TOKEN"] = "short"
    out = run_edge(tmp_path, "--config", str(config), "--tunnel", env=env)
    assert out.returncode == 2 and "at least 16 characters" in out.stderr
    assert agent.events() == []  # no agent was ever started


def test_offline_the_tunnel_fails_in_one_line_within_its_bound_and_the_device_serves(tmp_path):
    edge_models()
    agent = Agent(tmp_path / "agent")
    config = edge_config(tmp_path, agent, tunnel_timeout=2.0)
    env = {**agent.env("offline"), "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN}
    edge = Edge(tmp_path / "data", "--config", str(config), "--tunnel", env=env)
    try:
        began = time.monotonic()
        assert edge.health()["tunnel"]["state"] in ("starting", "failed")
        answer = requests.post(
            edge.url + "api/predict", json={"mode": "digit", "strokes": SEVEN}, timeout=10
        )
        assert answer.status_code == 200  # serving while the tunnel tries
        tunnel = wait_for(
            lambda: (t := edge.health()["tunnel"])["state"] == "failed" and t, 10, "no failure"
        )
        # The worker started the tunnel before its first answer: within 2 s and a little slack.
        assert time.monotonic() - began < 2 + 1.5
        assert tunnel == {"state": "failed", "url": None, "error": OFFLINE, "viewer_url": None}
        assert edge.log_path.read_text().count(OFFLINE) == 1
        (started,) = agent.events("start")
        wait_for(lambda: not alive(started["pid"]), 5, "the failed agent was not stopped")
        assert requests.get(edge.url, timeout=10).status_code == 200
    finally:
        edge.stop()


# ---- the sync server ---------------------------------------------------------------------------

ADMIN = "admin-token-for-the-tunnel-tests"


def sync_env(agent: Agent, tmp_path: Path, mode: str = "ok", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HWR_SYNC_")}
    env.update(agent.env(mode))
    env.update(
        HWR_SYNC_ADMIN_TOKEN=ADMIN,
        HWR_SYNC_MODELS_DIR=str(edge_models()),
        HWR_SYNC_START_WORKER="false",
        HWR_SYNC_NGROK_PATH=str(agent.path),
        HWR_SYNC_TUNNEL_TIMEOUT="5",
    )
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_the_sync_server_tunnel_opens_for_the_admin_and_survives_its_workers(tmp_path):
    from tests.sync_harness import Process

    agent = Agent(tmp_path / "agent")
    cmd = [sys.executable, "-m", "sync_server", "serve", "--port", "0", "--tunnel"]
    cmd += ["--data-dir", str(tmp_path / "server")]
    server = Process(cmd, tmp_path / "server.log", "/api/v1/models", sync_env(agent, tmp_path))
    try:

        def status(token: str | None = ADMIN) -> requests.Response:
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.get(server.url + "/api/v1/admin/tunnel", headers=auth, timeout=10)

        opened = wait_for(lambda: (s := status().json())["state"] == "open" and s, 15, "no tunnel")
        assert URL.match(opened["url"]) and opened["error"] is None
        assert status(None).status_code == 401 and status("wrong").status_code == 401
        (started,) = agent.events("start")
        for _ in range(2):  # a worker that exits (and the one forked to replace it) leaves it
            worker = [p for p in children(server.proc.pid) if p != started["pid"]][0]
            os.kill(worker, 15)
            wait_for(lambda w=worker: not alive(w), 15, "the worker did not exit")
            wait_for(lambda: len(children(server.proc.pid)) == 3, 30, "no worker replaced it")
            time.sleep(0.5)
            assert alive(started["pid"]) and status().json()["state"] == "open"
        log = server.tail(20000)
        assert f"remote server: {opened['url']}" in log
        assert NGROK_TOKEN not in log and ADMIN not in log
    finally:
        code = server.stop()
    assert code == 0
    wait_for(lambda: not alive(started["pid"]), 5, "the agent outlived the server")
    assert [e["method"] for e in agent.events("request")] == ["POST", "DELETE"]
    state = json.loads((tmp_path / "server" / "tunnel.json").read_text())
    assert state == {"state": "closed", "url": None, "error": None}


def test_the_sync_server_tunnel_is_refused_without_an_admin_token(tmp_path):
    agent = Agent(tmp_path / "agent")
    env = sync_env(agent, tmp_path, HWR_SYNC_ADMIN_TOKEN="")
    cmd = [sys.executable, "-m", "sync_server", "serve", "--port", "0", "--tunnel"]
    cmd += ["--data-dir", str(tmp_path / "server")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("hwr-sync-server: ngrok tunnel refused: the sync server's admin routes")
    assert "would be open to anyone with the public URL" in line, line
    assert agent.events() == []


def test_pyngrok_s_own_ngrok_script_on_path_is_not_taken_for_the_agent(tmp_path, monkeypatch):
    from hwrcore import tunnel

    script = tmp_path / "ngrok"
    script.write_text("#!/usr/bin/python3\nimport sys\nfrom pyngrok.ngrok import main\nmain()\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("PYNGROK_NGROK_PATH", raising=False)
    path, _ = tunnel._resolve_ngrok_path(None)
    assert path != str(script)  # it would run the agent as its child: killing it leaves the agent
    agent = Agent(tmp_path / "agent")
    monkeypatch.setenv("PATH", f"{agent.path.parent}:{os.environ['PATH']}")
    assert tunnel._resolve_ngrok_path(None) == (str(agent.path), True)
