"""ngrok tunnels: the real pyngrok code path against tests/fake_ngrok.py, a fake agent process."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pyngrok")

from hwrcore.tunnel import (  # noqa: E402
    Tunnel,
    TunnelError,
    TunnelOptionsError,
    TunnelRefused,
    read_auth_token,
    require_authentication,
    start_tunnel,
    traffic_policy,
)

FAKE = Path(__file__).resolve().parent / "fake_ngrok.py"
TOKEN = "2abcTOKENxyz_" + "9" * 20
PASSWORD = "correct-horse-battery"
OFFLINE = "ngrok tunnel not opened: cannot reach the ngrok service (offline?); serving locally only"
URL = re.compile(r"^https://[0-9a-f]{12}\.ngrok-free\.app$")


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """A fake ``ngrok`` on disk (a wrapper exec'ing fake_ngrok.py) and its record file."""
    binary = tmp_path / "bin" / "ngrok"
    binary.parent.mkdir()
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    binary.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_NGROK_RECORD", str(record))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("PYNGROK_NGROK_PATH", raising=False)

    class Agent:
        path = binary

        @staticmethod
        def events(kind: str | None = None) -> list[dict]:
            if not record.exists():
                return []
            rows = [json.loads(line) for line in record.read_text().splitlines()]
            return [r for r in rows if kind is None or r["event"] == kind]

        @staticmethod
        def mode(name: str, **env: str) -> None:
            monkeypatch.setenv("FAKE_NGROK_MODE", name)
            for key, value in env.items():
                monkeypatch.setenv(key, value)

    return Agent


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def make(agent, port: int = 8123, **kw) -> Tunnel:
    kw.setdefault("timeout", 10)
    return Tunnel(port, auth_token=TOKEN, ngrok_path=agent.path, **kw)


def test_start_returns_at_once_then_opens_reports_url_and_close_kills_the_agent(agent, caplog):
    caplog.set_level(logging.INFO)
    seen = []
    tunnel = make(agent, on_change=lambda t: seen.append(t.state))
    began = time.monotonic()
    tunnel.start()
    assert time.monotonic() - began < 0.5
    assert tunnel.state == "starting" and tunnel.url is None

    url = tunnel.wait(10)
    assert url and URL.match(url), tunnel.status()
    assert tunnel.status() == {"state": "open", "url": url, "error": None}
    assert seen == ["open"]
    assert f"ngrok tunnel open: {url} -> http://127.0.0.1:8123" in caplog.text

    (started,) = agent.events("start")
    assert started["argv"][:3] == ["--none", "--log", "stdout"]
    assert TOKEN not in " ".join(started["argv"])  # not on the agent's command line (ps)
    assert started["authtoken"] == TOKEN  # it reached the agent through its private config
    assert started["config_mode"] == "0o600"
    (post,) = agent.events("request")
    assert post["path"] == "/api/endpoints"
    assert post["body"]["upstream"] == {"url": "http://127.0.0.1:8123"}
    assert post["body"]["name"].startswith("hwr-8123-")
    assert "traffic_policy" not in post["body"]
    pid = tunnel.pid
    assert pid == started["pid"] and alive(pid)

    began = time.monotonic()
    tunnel.close()
    assert time.monotonic() - began < 5
    assert not alive(pid)
    assert tunnel.state == "closed" and tunnel.url is None
    assert seen == ["open", "closed"]
    deletes = [e for e in agent.events("request") if e["method"] == "DELETE"]
    assert [d["path"] for d in deletes] == [f"/api/endpoints/{post['body']['name']}"]
    assert not Path(started["config_path"]).exists()
    assert TOKEN not in caplog.text


def test_protection_reaches_the_agent_as_traffic_policy_and_secrets_stay_out_of_logs(agent, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("pyngrok", "pyngrok.ngrok", "pyngrok.process", "pyngrok.process.ngrok"):
        caplog.set_level(logging.DEBUG, logger=name)  # even at DEBUG nothing secret shows
    tunnel = make(
        agent,
        basic_auth=[f"teacher:{PASSWORD}"],
        oauth_provider="google",
        allow_emails=["ada@school.example", "alan@school.example"],
        ip_allow=["203.0.113.7", "198.51.100.0/24"],
    )
    try:
        assert tunnel.open()
    finally:
        tunnel.close()
    (post,) = [e for e in agent.events("request") if e["method"] == "POST"]
    assert post["body"]["traffic_policy"] == {
        "on_http_request": [
            {
                "actions": [
                    {
                        "type": "restrict-ips",
                        "config": {"enforce": True, "allow": ["203.0.113.7/32", "198.51.100.0/24"]},
                    }
                ]
            },
            {
                "actions": [
                    {"type": "basic-auth", "config": {"credentials": [f"teacher:{PASSWORD}"]}}
                ]
            },
            {"actions": [{"type": "oauth", "config": {"provider": "google"}}]},
            {
                "expressions": [
                    "!(actions.ngrok.oauth.identity.email in "
                    "['ada@school.example', 'alan@school.example'])"
                ],
                "actions": [{"type": "deny"}],
            },
        ]
    }
    pyngrok_debug = [r for r in caplog.records if r.name == "pyngrok.ngrok"]
    assert any("Creating tunnel with options" in r.getMessage() for r in pyngrok_debug)
    assert "teacher:***" in caplog.text
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text


def test_offline_fails_with_one_line_within_the_bound_and_the_caller_keeps_running(agent, caplog):
    caplog.set_level(logging.DEBUG)
    agent.mode("offline")
    seen = []
    began = time.monotonic()
    tunnel = make(agent, timeout=2, on_change=lambda t: seen.append(t.error))
    tunnel.start()  # never raises into the caller
    assert time.monotonic() - began < 0.5
    tunnel.wait(10)
    elapsed = time.monotonic() - began
    assert elapsed < 2 + 1.5, elapsed
    assert tunnel.state == "failed" and tunnel.url is None
    assert tunnel.error == OFFLINE
    assert seen == [OFFLINE]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in loud] == [OFFLINE]
    (started,) = agent.events("start")
    assert not alive(started["pid"])
    tunnel.close()
    with pytest.raises(TunnelError, match="cannot reach the ngrok service"):
        tunnel.open()


def test_a_silent_agent_is_cut_off_at_the_time_bound(agent):
    agent.mode("hang")  # web service up, never connected, no more lines: pyngrok blocks reading
    began = time.monotonic()
    tunnel = make(agent, timeout=2).start()
    tunnel.wait(10)
    assert time.monotonic() - began < 2 + 1.5
    assert tunnel.error == (
        "ngrok tunnel not opened: the ngrok agent was not connected within 2 s; "
        "serving locally only"
    )
    (started,) = agent.events("start")
    assert not alive(started["pid"])


def test_close_while_starting_is_bounded_and_kills_the_agent(agent):
    agent.mode("hang")
    tunnel = make(agent, timeout=30).start()
    deadline = time.monotonic() + 5
    while not agent.events("start") and time.monotonic() < deadline:
        time.sleep(0.05)
    (started,) = agent.events("start")
    began = time.monotonic()
    tunnel.close()
    assert time.monotonic() - began < 5
    assert tunnel.state == "closed"
    time.sleep(0.1)
    assert not alive(started["pid"])


def test_a_slow_agent_within_the_bound_still_opens(agent):
    agent.mode("slow", FAKE_NGROK_DELAY="1.5")
    tunnel = make(agent, timeout=10)
    try:
        assert URL.match(tunnel.open())
    finally:
        tunnel.close()


def test_a_refused_token_is_one_line_without_the_token(agent, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pyngrok.process.ngrok")  # ngrok echoes the token
    agent.mode("bad-token")
    tunnel = make(agent, timeout=5).start()
    tunnel.wait(10)
    assert tunnel.error == (
        "ngrok tunnel not opened: ngrok refused the auth token (ERR_NGROK_105); "
        "check NGROK_AUTHTOKEN; serving locally only"
    )
    assert any("Your authtoken: ***" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text
    tunnel.close()


def test_an_endpoint_the_agent_refuses_fails_and_stops_the_agent(agent):
    agent.mode("reject")
    tunnel = make(agent, timeout=5).start()
    tunnel.wait(10)
    assert tunnel.state == "failed"
    assert tunnel.error.startswith("ngrok tunnel not opened: PyngrokNgrokHTTPError")
    assert tunnel.error.endswith("serving locally only")
    (started,) = agent.events("start")
    assert not alive(started["pid"])


def test_a_missing_binary_fails_at_once_and_never_downloads(agent, tmp_path):
    tunnel = Tunnel(8123, auth_token=TOKEN, ngrok_path=tmp_path / "no-ngrok", timeout=5).start()
    tunnel.wait(5)
    assert tunnel.error.startswith(f"ngrok tunnel not opened: no ngrok agent at {tmp_path}")
    assert agent.events() == []


def test_no_token_refuses_before_anything_starts(agent, tmp_path):
    with pytest.raises(TunnelRefused, match="no auth token; set NGROK_AUTHTOKEN"):
        Tunnel(8123, auth_token="  ", ngrok_path=agent.path)
    with pytest.raises(TunnelRefused, match="no auth token"):
        start_tunnel(
            8123, protected=True, what="the edge viewer", environ={}, ngrok_path=agent.path
        )
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(TunnelRefused, match="is empty"):
        read_auth_token(empty, environ={})
    with pytest.raises(TunnelRefused, match="cannot read the auth token file"):
        read_auth_token(tmp_path / "missing", environ={})
    assert agent.events() == []


def test_an_unprotected_app_is_refused_even_with_a_token(agent):
    with pytest.raises(
        TunnelRefused, match="the edge viewer would be open to anyone with the public URL"
    ) as err:
        start_tunnel(
            8123,
            protected=False,
            what="the edge viewer",
            environ={"NGROK_AUTHTOKEN": TOKEN},
            ngrok_path=agent.path,
        )
    assert err.value.code == "tunnel_refused"
    assert TOKEN not in str(err.value)
    require_authentication(True, "the sync server")  # protected: no error
    assert agent.events() == []


def test_the_token_comes_from_the_environment_first_then_the_file(tmp_path, caplog):
    path = tmp_path / "ngrok-token"
    path.write_text(f"{TOKEN}-file\n")
    path.chmod(0o600)
    assert read_auth_token(path, environ={"NGROK_AUTHTOKEN": TOKEN}) == TOKEN
    assert read_auth_token(path, environ={}) == f"{TOKEN}-file"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)
    assert read_auth_token(path, environ={}) == f"{TOKEN}-file"
    assert "readable by other users" in caplog.text and TOKEN not in caplog.text


def test_start_tunnel_opens_for_a_protected_app(agent):
    tunnel = start_tunnel(
        8124,
        protected=True,
        what="the sync server",
        environ={"NGROK_AUTHTOKEN": TOKEN},
        ngrok_path=agent.path,
        timeout=10,
    )
    try:
        assert URL.match(tunnel.wait(10) or ""), tunnel.status()
    finally:
        tunnel.close()
    assert agent.events("start")[0]["authtoken"] == TOKEN


@pytest.mark.parametrize(
    "options, message",
    [
        ({"basic_auth": ["teacher:short"]}, "8 to 128 characters"),
        ({"basic_auth": ["nocolon"]}, "user:password"),
        ({"basic_auth": [f"u{i}:{PASSWORD}" for i in range(11)]}, "at most 10"),
        ({"allow_emails": ["ada@school.example"]}, "needs oauth_provider"),
        ({"oauth_provider": "google", "allow_emails": ["x' || true"]}, "not an e-mail"),
        ({"oauth_provider": "Google!"}, "provider name"),
        ({"ip_allow": ["10.0.0.300"]}, "not an IP address or CIDR"),
    ],
)
def test_protection_options_ngrok_would_refuse_are_refused_here(options, message):
    with pytest.raises(TunnelOptionsError, match=message):
        traffic_policy(**options)


def test_no_protection_options_means_no_policy():
    assert traffic_policy() is None


def test_an_agent_that_dies_after_opening_turns_the_tunnel_failed(agent, caplog):
    seen = []
    tunnel = make(agent, on_change=lambda t: seen.append(t.state))
    try:
        assert tunnel.open()
        os.kill(tunnel.pid, 9)
        deadline = time.monotonic() + 5
        while alive(tunnel.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        assert tunnel.status() == {
            "state": "failed",
            "url": None,
            "error": "ngrok tunnel lost: the ngrok agent exited (code -9); serving locally only",
        }
        assert seen == ["open", "failed"]
        assert caplog.text.count("ngrok tunnel lost") == 1
    finally:
        tunnel.close()


def test_importing_the_module_does_not_import_pyngrok():
    import subprocess

    code = "import sys, hwrcore.tunnel; print('pyngrok' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_leftover_agent_is_stopped_only_if_it_still_runs_with_its_config(tmp_path, caplog):
    import subprocess

    from hwrcore import leftover_agent

    pid_file = tmp_path / "ngrok.pid"
    folder = tmp_path / f"{leftover_agent.CONFIG_DIR_PREFIX}x"
    folder.mkdir()
    config = folder / "ngrok.yml"
    config.write_text("agent: {}\n")
    nap = [sys.executable, "-c", "import time; time.sleep(30)"]
    mine = subprocess.Popen([*nap, "--config", str(config)])  # as an agent is started
    other = subprocess.Popen(nap)  # the pid given to something else since
    try:
        leftover_agent.record(pid_file, other.pid, str(config))
        assert oct(pid_file.stat().st_mode & 0o777) == "0o600"
        assert leftover_agent.stop_leftover(pid_file) is None
        assert other.poll() is None and not pid_file.exists()  # left alone
        folder.mkdir()
        leftover_agent.record(pid_file, mine.pid, str(config))
        leftover_agent.forget(pid_file, other.pid)  # names another pid: kept
        assert pid_file.exists()
        with caplog.at_level(logging.WARNING):
            assert leftover_agent.stop_leftover(pid_file) == mine.pid
        assert mine.wait(5) == -9 and not folder.exists() and not pid_file.exists()
        assert f"left running (pid {mine.pid})" in caplog.text
        pid_file.write_text("not json")
        assert leftover_agent.stop_leftover(pid_file) is None and not pid_file.exists()
        assert "unreadable ngrok pid file" in caplog.text
        assert leftover_agent.stop_leftover(pid_file) is None  # no file: nothing to do
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
