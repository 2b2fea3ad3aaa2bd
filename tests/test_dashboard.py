"""The admin dashboard over HTTP (Flask's test client on a real SQLite database): sign-in,
sessions, CSRF, headers, escaping, and each page and action."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hwrcore.labels import LABEL_SETS
from sync_server import auth, plots
from sync_server.app import close_app, create_app
from sync_server.config import load_config
from sync_server.devices import add_device
from tests import versions
from tests.sync_server_helpers import MODELS_DIR, image_b64, item, new_version

ADMIN = "admin-token-for-dashboard-tests-0123456789"
PAGES = ["/admin/", "/admin/corrections", "/admin/quarantine", "/admin/models", "/admin/jobs"]


def make_app(tmp_path: Path, admin: str = ADMIN, **settings: object):
    config = load_config(
        env={"HWR_SYNC_ADMIN_TOKEN": admin} if admin else {},
        overrides={
            "data_dir": tmp_path / "server",
            "models_dir": MODELS_DIR,
            "rate_burst": 10_000,
            "release_poll_interval": 3600.0,
            **settings,
        },
    )
    return create_app(config)


@pytest.fixture
def app(tmp_path: Path):
    a = make_app(tmp_path)
    yield a
    close_app(a)


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def sign_in(client, token: str = ADMIN, name: str = "Ms Rivera", **kw):
    page = client.get("/admin/signin", **kw)
    return client.post(
        "/admin/signin",
        data={"csrf_token": csrf_of(page.text), "token": token, "name": name},
        **kw,
    )


def signed_in(client) -> str:
    """Sign in; a CSRF token valid for this session's forms."""
    r = sign_in(client)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/admin/").text)


def device_headers(app, name: str = "room-1", group: str | None = None) -> dict[str, str]:
    token = add_device(app.extensions["hwr_sync"].engine, name, group)
    return {"Authorization": f"Bearer {token}"}


def admin_rules(app) -> list[tuple[str, str]]:
    """Every (method, path) of the dashboard other than sign-in and its static files."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint in (
            "admin.signin",
            "admin.signin_post",
            "admin.static",
        ):
            continue
        path = rule.rule.replace("<uuid>", "00000000-0000-4000-8000-000000000000")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, path))
    return out


# ---- refused without a session ---------------------------------------------------------------


def test_every_admin_route_is_refused_without_a_session(app, client):
    rules = admin_rules(app)
    assert len(rules) == 16  # as tests/test_dashboard_browser.py's ROUTES lists them
    for method, path in rules:
        r = client.open(path, method=method)
        if method == "GET" and not path.endswith((".json", ".png")):
            assert r.status_code == 303, path
            assert r.headers["Location"].startswith("/admin/signin?next="), path
        else:
            assert r.status_code == 401, (method, path)
            assert r.json["error"]["code"] == "unauthorized", path
        assert r.headers["Cache-Control"] == "no-store", path
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path


def test_a_forged_or_signed_out_cookie_is_refused(app, client):
    signed_in(client)
    assert client.get("/admin/").status_code == 200
    cookie = client.get_cookie("hwr_admin", path="/admin").value
    # another secret signs another cookie: worthless here
    other = make_app(Path(app.config["HWR_CONFIG"].data_dir).parent / "other")
    try:
        c2 = other.test_client()
        c2.set_cookie("hwr_admin", cookie, path="/admin")
        assert c2.get("/admin/").status_code == 303
    finally:
        close_app(other)
    # signing out ends the session on the server: the old cookie is worth nothing
    token = csrf_of(client.get("/admin/").text)
    r = client.post("/admin/signout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == "/admin/signin"
    assert client.get("/admin/").status_code == 303
    c3 = app.test_client()
    c3.set_cookie("hwr_admin", cookie, path="/admin")
    assert c3.get("/admin/").status_code == 303
    assert c3.get("/admin/jobs.json").status_code == 401


# ---- sign-in ---------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_http_only_cookie_and_refuses_a_wrong_token(client):
    r = sign_in(client, token="not-the-token")
    assert r.status_code == 401 and "That is not the admin token." in r.text
    assert client.get("/admin/").status_code == 303
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("hwr_admin="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert "Expires=" in cookie  # the session has a lifetime
    page = client.get("/admin/")
    assert page.status_code == 200 and "Ms Rivera" in page.text


def test_the_cookie_is_secure_over_https_and_forwarded_proto_needs_proxy_hops(tmp_path: Path):
    direct = make_app(tmp_path / "a")
    try:
        over_https = direct.test_client()
        # over https, Flask-WTF also wants a Referer of this very host, as browsers send
        r = sign_in(over_https, base_url="https://school.example")
        assert r.status_code == 403 and r.json["error"]["code"] == "csrf_failed"
        r = sign_in(
            over_https,
            base_url="https://school.example",
            headers={"Referer": "https://school.example/admin/signin"},
        )
        cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("hwr_admin="))
        assert "Secure" in cookie
        # not behind a proxy: X-Forwarded-Proto is ignored
        c = direct.test_client()
        r = sign_in(c, headers={"X-Forwarded-Proto": "https"})
        cookie = next(x for x in r.headers.getlist("Set-Cookie") if x.startswith("hwr_admin="))
        assert "Secure" not in cookie
    finally:
        close_app(direct)
    proxied = make_app(tmp_path / "b", proxy_hops=1)
    try:
        c = proxied.test_client()
        r = sign_in(
            c,
            headers={
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "school.example",
                "Referer": "https://school.example/admin/signin",
            },
        )
        cookie = next(x for x in r.headers.getlist("Set-Cookie") if x.startswith("hwr_admin="))
        assert "Secure" in cookie
    finally:
        close_app(proxied)


def test_failed_sign_ins_are_limited_per_address(client):
    for _ in range(auth.FAILS_PER_ADDRESS):
        assert sign_in(client, token="guess").status_code == 401
    r = sign_in(client)  # even the right token waits now
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in r.text
    other = sign_in(client, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 303  # another address is not held up


def test_wrong_tokens_from_outside_never_keep_the_school_network_out(app, client):
    """Through the tunnel (the agent on this machine adds X-Forwarded-For) every address counts
    on its own and all of them together; the school's own network only ever per address, so no
    device on it, and nobody outside, can keep the admin out with wrong tokens."""
    for i in range(auth.FAILS_REMOTE):
        r = sign_in(
            app.test_client(),
            token="guess",
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
            headers={"X-Forwarded-For": f"198.51.100.{i}"},
        )
        assert r.status_code == 401
    tunnel = {"REMOTE_ADDR": "127.0.0.1"}
    new_remote = sign_in(
        app.test_client(), environ_base=tunnel, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert new_remote.status_code == 429  # outside, all together: a while
    public = sign_in(app.test_client(), environ_base={"REMOTE_ADDR": "93.184.216.34"})
    assert public.status_code == 429  # a public address is outside too
    assert sign_in(app.test_client(), environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 303
    assert sign_in(client).status_code == 303  # the server's own machine
    for _ in range(auth.FAILS_PER_ADDRESS):  # a device on the school network guessing
        sign_in(app.test_client(), token="guess", environ_base={"REMOTE_ADDR": "10.0.0.66"})
    assert sign_in(app.test_client(), environ_base={"REMOTE_ADDR": "10.0.0.66"}).status_code == 429
    assert sign_in(app.test_client(), environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 303


def test_the_sign_in_limit_holds_across_worker_processes(app, client, tmp_path: Path):
    """Two apps on one database stand for two gunicorn workers: failures on one count on both."""
    other = make_app(tmp_path)
    try:
        second = other.test_client()
        for i in range(auth.FAILS_PER_ADDRESS):
            worker = client if i % 2 else second
            assert sign_in(worker, token="guess").status_code == 401
        assert sign_in(client).status_code == 429 and sign_in(second).status_code == 429
        # a minute later the address may try again (the database keeps only that minute)
        limiter = app.extensions["hwr_signin_limiter"]
        later = time.time() + auth.FAIL_WINDOW_S + 1
        assert auth.SignInLimiter(limiter.engine, clock=lambda: later).wait("127.0.0.1") == 0.0
    finally:
        close_app(other)


def test_no_admin_token_configured_refuses_every_sign_in(tmp_path: Path):
    a = make_app(tmp_path, admin="")
    try:
        c = a.test_client()
        page = c.get("/admin/signin")
        assert "No admin token is configured" in page.text
        r = c.post("/admin/signin", data={"csrf_token": "x", "token": ""})
        assert r.status_code == 403  # the CSRF check refuses first: the form came from nowhere
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is None  # no form to fill in
    finally:
        close_app(a)


def test_sign_in_without_csrf_and_open_redirects_are_refused(client):
    r = client.post("/admin/signin", data={"token": ADMIN})
    assert r.status_code == 403 and r.json["error"]["code"] == "csrf_failed"
    page = client.get("/admin/signin?next=https://evil.example/")
    assert "evil" not in page.text
    r = client.post(
        "/admin/signin",
        data={"csrf_token": csrf_of(page.text), "token": ADMIN, "next": "//evil.example/x"},
    )
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"
    client.post("/admin/signout", data={"csrf_token": csrf_of(client.get("/admin/").text)})
    page = client.get("/admin/signin?next=/admin/models")
    r = client.post(
        "/admin/signin",
        data={"csrf_token": csrf_of(page.text), "token": ADMIN, "next": "/admin/models"},
    )
    assert r.headers["Location"] == "/admin/models"


def test_actions_need_the_csrf_token_of_this_session(app, client):
    signed_in(client)
    r = client.post("/admin/models/rollback", data={"name": "digits", "version": versions.digits()})
    assert r.status_code == 403 and r.json["error"]["code"] == "csrf_failed"
    other = app.test_client()
    foreign = signed_in(other)
    r = client.post("/admin/jobs/retrain", data={"name": "digits", "csrf_token": foreign})
    assert r.status_code == 403 and r.json["error"]["code"] == "csrf_failed"


def test_the_session_secret_is_made_0600_and_a_loose_one_refused(app, tmp_path: Path):
    path = tmp_path / "server" / auth.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 64
    assert auth.load_or_create_secret(tmp_path / "server") == path.read_bytes()
    os.chmod(path, 0o644)
    with pytest.raises(auth.AuthError, match="chmod 600"):
        auth.load_or_create_secret(tmp_path / "server")


def test_expired_sessions_are_refused_and_swept(tmp_path: Path):
    store = auth.SessionStore(tmp_path, lifetime_s=-1.0)
    sid, s = store.create("a")
    assert store.get(sid) is None
    store.sweep()
    assert list(store.folder.glob("*.json")) == []
    live = auth.SessionStore(tmp_path, lifetime_s=60.0)
    sid, s = live.create("b")
    assert live.get(sid).who == "b" and live.get(sid + "x") is None


# ---- pages, headers, assets ------------------------------------------------------------------


class Assets(HTMLParser):
    """Every URL a page loads or links to (src, href, action)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "action", "formaction"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "script" and not a.get("src"):
            self.inline_scripts += 1
        self.inline_handlers += [k for k in a if k.startswith("on")]
        if "style" in a:
            self.inline_handlers.append("style")


def test_every_page_loads_only_local_assets_and_no_inline_script(app, client):
    h = device_headers(app, "room-1")
    client.post(
        "/api/v1/heartbeat",
        json={"tunnel_url": "https://room-1.ngrok.app/viewer", "pending": 0},
        headers=h,
    )
    signed_in(client)
    for path in ["/admin/signin", *PAGES]:
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-store"
        parser = Assets()
        parser.feed(r.text)
        assert parser.inline_scripts == 0 and parser.inline_handlers == [], path
        for url in parser.urls:
            if url == "https://room-1.ngrok.app/viewer":
                continue  # the device's own viewer link, not an asset of the page
            assert url.startswith("/admin") and not url.startswith("//"), (path, url)
    for asset in ("admin.css", "admin.js", "icon.svg"):
        with client.get(f"/admin/static/{asset}") as r:
            assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"


def test_devices_page_shows_heartbeats_and_escapes_what_devices_send(app, client):
    h = device_headers(app, "room-1", group="class-4b")
    device_headers(app, "room-2")
    evil = '<img src=x onerror="alert(1)">'
    r = client.post(
        "/api/v1/heartbeat",
        json={
            "models": {"digit": {"name": "digits", "version": evil}},
            "pending": 7,
            "software": evil,
            "tunnel_url": "javascript:alert(1)",
        },
        headers=h,
    )
    assert r.status_code == 200
    signed_in(client)
    page = client.get("/admin/").text
    assert evil not in page and "&lt;img src=x" in page
    assert "javascript:" not in page
    row = re.search(r'<tr data-device="room-1">(.*?)</tr>', page, re.S).group(1)
    assert "online" in row and "class-4b" in row and ">7<" in row
    row2 = re.search(r'<tr data-device="room-2">(.*?)</tr>', page, re.S).group(1)
    assert "offline" in row2 and "never" in row2


def _heartbeat(client, token: str) -> int:
    r = client.post(
        "/api/v1/heartbeat",
        json={"models": {}, "pending": 0},
        headers={"Authorization": f"Bearer {token}"},
    )
    return r.status_code


def _token_on(page: str) -> str:
    m = re.search(r'<code id="token">([A-Za-z0-9_-]{40,})</code>', page)
    assert m, page
    return m.group(1)


def test_a_device_added_from_the_dashboard_gets_its_token_once(app, client):
    csrf = signed_in(client)
    r = client.post(
        "/admin/devices/add", data={"name": "room-7", "group": "year-2", "csrf_token": csrf}
    )
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    token = _token_on(r.text)
    key = app.extensions["hwr_sync"].key
    from hwrcore.release import public_key_text

    assert public_key_text(key) in r.text and f"HWR_EDGE_SYNC_TOKEN={token}" in r.text
    assert 'sync_url = "http://localhost"' in r.text
    assert "room-7 is registered in group year-2." in r.text
    assert _heartbeat(client, token) == 200
    page = client.get("/admin/").text
    assert token not in page  # shown once: never on the devices page, never in the session
    cookie = client.get_cookie("hwr_admin", path="/admin")
    assert cookie is not None and token not in cookie.value
    row = re.search(r'<tr data-device="room-7">(.*?)</tr>', page, re.S).group(1)
    assert "year-2" in row and "New token" in row and "Revoke" in row

    again = client.post("/admin/devices/add", data={"name": "room-7", "csrf_token": csrf})
    assert again.status_code == 303
    assert "a device named &#39;room-7&#39; exists already" in client.get("/admin/").text
    bad = client.post("/admin/devices/add", data={"name": "../x", "csrf_token": csrf})
    assert bad.status_code == 303
    assert "must be 1-100 letters" in client.get("/admin/").text
    r = client.post("/admin/devices/add", data={"name": "room-8"})  # no CSRF token
    assert r.status_code == 403 and r.json["error"]["code"] == "csrf_failed"


def test_revoke_and_new_token_from_the_dashboard(app, client):
    old = device_headers(app, "room-1")["Authorization"].split()[1]
    csrf = signed_in(client)
    r = client.post("/admin/devices/revoke", data={"name": "room-1", "csrf_token": csrf})
    assert r.status_code == 303 and _heartbeat(client, old) == 401
    page = client.get("/admin/").text
    assert "room-1 is revoked; give it a new token to let it sync again." in page
    row = re.search(r'<tr data-device="room-1">(.*?)</tr>', page, re.S).group(1)
    assert "revoked" in row and "Revoke</button>" not in row and "New token" in row

    r = client.post("/admin/devices/new-token", data={"name": "room-1", "csrf_token": csrf})
    assert r.status_code == 200 and "room-1 has a new token" in r.text
    new = _token_on(r.text)
    assert new != old and _heartbeat(client, new) == 200 and _heartbeat(client, old) == 401
    r = client.post("/admin/devices/new-token", data={"name": "room-9", "csrf_token": csrf})
    assert r.status_code == 303 and "no device named &#39;room-9&#39;" in client.get("/admin/").text
    r = client.post("/admin/devices/revoke", data={"name": "room-9", "csrf_token": csrf})
    assert r.status_code == 303 and "no device named &#39;room-9&#39;" in client.get("/admin/").text


def test_devices_page_says_whether_the_server_is_reachable_remotely(app, client):
    signed_in(client)
    card = re.compile(r'<li class="card" id="tunnel" data-state="(\w+)">(.*?)</li>', re.S)
    state, text = card.search(client.get("/admin/").text).groups()
    assert state == "off" and "no tunnel" in text
    status = Path(app.config["HWR_CONFIG"].data_dir) / "tunnel.json"
    url = "https://0123456789ab.ngrok-free.app"
    status.write_text(json.dumps({"state": "open", "url": url, "error": None}))
    state, text = card.search(client.get("/admin/").text).groups()
    assert state == "open" and f'href="{url}/admin/"' in text
    failed = "ngrok tunnel not opened: cannot reach the ngrok service (offline?)"
    status.write_text(json.dumps({"state": "failed", "url": None, "error": failed}))
    os.utime(status, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime, as a rewrite has
    state, text = card.search(client.get("/admin/").text).groups()
    assert state == "failed" and failed in text and "href" not in text


def test_corrections_page_counts_per_class_and_device(app, client):
    a, b = device_headers(app, "room-1"), device_headers(app, "room-2")
    items_a = [item(label="7") for _ in range(3)] + [item(mode="char", label="f")]
    for h, items in ((a, items_a), (b, [item(label="1")])):
        r = client.post("/api/v1/corrections", json={"corrections": items}, headers=h)
        assert [x["status"] for x in r.json["results"]] == ["stored"] * len(items)
    signed_in(client)
    page = client.get("/admin/corrections").text
    assert 'id="total-digit">4<' in page and 'id="total-char">1<' in page
    per_device = re.search(r'id="per-device">(.*?)</table>', page, re.S).group(1)
    assert re.search(r"room-1</th><td[^>]*>3</td><td[^>]*>1</td><td[^>]*>4<", per_device)
    seven = re.search(
        r'id="classes-digit">.*?<th scope="row">7</th><td class="num">(\d+)<', page, re.S
    )
    assert seven and seven.group(1) == "3"
    assert page.count("<svg") >= 4  # over time, two per-class plots, per device


def test_a_drawing_is_served_as_the_png_of_its_model_input(app, client):
    h = device_headers(app)
    pixels = np.zeros(784, dtype="<f4")
    pixels[28 * 14 : 28 * 14 + 28] = 1.0  # one white row across the middle
    one = item(image=image_b64(0.0))
    one["image"] = __import__("base64").b64encode(pixels.tobytes()).decode()
    client.post("/api/v1/corrections", json={"corrections": [one]}, headers=h)
    signed_in(client)
    r = client.get(f"/admin/drawings/{one['id']}.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.data)))
    assert img.shape == (28, 28) and img[14].min() == 255 and img[13].max() == 0
    assert client.get("/admin/drawings/not-a-uuid.png").status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.get(f"/admin/drawings/{missing}.png").status_code == 404


def test_models_page_shows_versions_with_accuracy_and_recall(app, client):
    signed_in(client)
    page = client.get("/admin/models").text
    for name in ("digits", "characters"):
        assert f'id="model-{name}"' in page
    table = re.search(r'data-model="digits">(.*?)</table>', page, re.S).group(1)
    assert versions.shown_accuracy("digits") in table  # the shipped manifest's test accuracy
    nine = re.escape(versions.shown_recall("digits", "9"))
    assert re.search(rf'data-label="9"><th scope="row">9</th>\s*<td class="num"[^>]*>{nine}', table)


# ---- actions ---------------------------------------------------------------------------------


def models_as_device(client, h) -> dict[str, str]:
    r = client.get("/api/v1/models", headers=h)
    return {m: v["release"]["release"]["version"] for m, v in r.json["models"].items()}


def test_publish_by_upload_then_roll_back(app, client, tmp_path: Path):
    h = device_headers(app)
    token = signed_in(client)
    shipped, new = versions.digits(), versions.digits(1)
    manifest = new_version(tmp_path / "upload", new)
    model = manifest.with_name(f"digits-{new}.tflite")
    r = client.post(
        "/admin/models/publish",
        data={
            "csrf_token": token,
            "manifest": (io.BytesIO(manifest.read_bytes()), f"digits-{new}.json"),
            "model": (io.BytesIO(model.read_bytes()), f"digits-{new}.tflite"),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 303 and r.headers["Location"] == "/admin/models"
    assert f"digits {new} is published" in client.get("/admin/models").text
    assert models_as_device(client, h)["digit"] == new
    assert not list((tmp_path / "server" / "uploads").iterdir())  # the upload is cleaned up
    # a file whose bytes differ from the manifest's sha256 is refused, the release unchanged
    r = client.post(
        "/admin/models/publish",
        data={
            "csrf_token": token,
            "manifest": (
                io.BytesIO(
                    manifest.read_bytes().replace(new.encode(), versions.digits(2).encode())
                ),
                "m.json",
            ),
            "model": (io.BytesIO(b"not a model"), "x.tflite"),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 303
    page = client.get("/admin/models").text
    assert 'data-kind="bad"' in page and "sha256" in page
    assert models_as_device(client, h)["digit"] == new
    # a manifest the server cannot read is named as it was uploaded, not by the server's path
    odd = {**json.loads(manifest.read_bytes()), "colour": "red"}
    r = client.post(
        "/admin/models/publish",
        data={
            "csrf_token": token,
            "manifest": (io.BytesIO(json.dumps(odd).encode()), "odd.json"),
            "model": (io.BytesIO(model.read_bytes()), f"digits-{new}.tflite"),
        },
        content_type="multipart/form-data",
    )
    page = client.get("/admin/models").text
    assert "odd.json: unknown field(s) &#39;colour&#39;" in page, re.findall(r"alert.>[^<]*", page)
    assert "uploads" not in page
    # roll back: a new release naming the shipped version reaches the device
    r = client.post(
        "/admin/models/rollback", data={"csrf_token": token, "name": "digits", "version": shipped}
    )
    assert r.status_code == 303
    assert f"digits {shipped} is the current release again" in client.get("/admin/models").text
    assert models_as_device(client, h)["digit"] == shipped
    releases = re.search(r'id="releases">(.*?)</table>', client.get("/admin/models").text, re.S)
    assert "Ms Rivera" in releases.group(1)  # who released it
    # rolling back to the current version says so and changes nothing
    client.post(
        "/admin/models/rollback", data={"csrf_token": token, "name": "digits", "version": shipped}
    )
    assert "is the current release already" in client.get("/admin/models").text


def test_an_upload_past_the_limit_is_said_on_the_models_page(app, client, monkeypatch):
    from sync_server import dashboard

    monkeypatch.setattr(dashboard, "UPLOAD_BYTES", 64 << 10)
    token = signed_in(client)
    r = client.post(
        "/admin/models/publish",
        data={
            "csrf_token": token,
            "manifest": (io.BytesIO(b"{}"), "m.json"),
            "model": (io.BytesIO(b"\0" * (100 << 10)), "m.tflite"),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 303 and r.headers["Location"] == "/admin/models"
    assert "the upload is larger than 0.0625 MiB" in client.get("/admin/models").text


def test_the_jobs_route_answers_json_for_the_live_page(client):
    signed_in(client)
    r = client.get("/admin/jobs.json")
    assert r.status_code == 200 and isinstance(r.json["jobs"], list)
    assert "available" in r.json


# ---- plots -----------------------------------------------------------------------------------


def test_plots_are_well_formed_svg_with_escaped_labels():
    evil = "<script>&"
    svgs = [
        plots.columns([("a", [1, 2]), (evil, [3, 0])], ["x", "y"], "per class"),
        plots.bars([(evil, [2, 5])], ["digits", "letters"], "per device"),
        plots.timeline({"digits": [(0.0, 1), (86400.0, 4)]}, "over time"),
        plots.dots([("1.0", 0.99), ("1.1", None), ("1.2", 0.995)], "accuracy"),
        plots.confusion(["0", evil], [[9, 1], [0, 10]], "confusion"),
    ]
    for svg in svgs:
        root = ET.fromstring(str(svg))  # parses: every label escaped
        assert root.tag.endswith("svg")
        assert "<script>" not in str(svg)
    titles = [t.text for t in ET.fromstring(str(svgs[4])).iter("{http://www.w3.org/2000/svg}title")]
    assert "true 0, predicted <script>&: 1 (10.0%)" in titles


def test_models_page_shows_a_retrained_versions_figures_side_by_side(app, client, tmp_path: Path):
    registry = app.extensions["hwr_sync"].registry
    matrix = [[0] * 10 for _ in range(10)]
    for i in range(10):
        matrix[i][i] = 95
    matrix[4][9] = 5  # a 4 read as 9
    recall = {str(i): 0.95 for i in range(10)}
    recall["9"] = 0.90  # points under the shipped model's recall of 9: shown red
    gate = {
        "passed": False,
        "reason": "class 9's recall fell by 9.2 points",
        "checks": [
            {"check": "base accuracy", "passed": True, "value": 0.995, "limit": 0.9943},
            {"check": "recall of 9", "passed": False, "detail": "fell 9.2 points (limit 3)"},
        ],
    }
    registry.publish(
        new_version(tmp_path / "m", versions.digits(2)),
        by="job 1",
        metrics={
            "base": {
                "accuracy": 0.9950,
                "per_class_recall": recall,
                "confusion_matrix": matrix,
                "n": 1000,
                "measured_on": "MNIST test, first 1,000",
            },
            "heldout": {"accuracy": 0.9, "n": 40},
        },
        gate=gate,
        snapshot="ab" * 32,
        job_id=1,
    )
    signed_in(client)
    page = client.get("/admin/models").text
    table = re.search(r'data-model="digits">(.*?)</table>', page, re.S).group(1)
    assert "99.50%" in table  # both versions, side by side
    assert versions.shown_accuracy("digits") in table
    assert "90.00%" in table and "of 40" in table  # held-out corrections
    assert "refused" in table and "class 9&#39;s recall fell by 9.2 points" in table
    assert "recall of 9: fell 9.2 points (limit 3)" in table
    assert "base accuracy: 0.995 (limit 0.9943)" in table
    assert re.search(
        r'data-label="9"><th scope="row">9</th>\s*<td class="num" data-kind="bad">90\.0%', table
    )
    assert "snapshot <code" in table and "job 1" in table
    section = re.search(r'id="model-digits">(.*?)</section>', page, re.S).group(1)
    assert (
        f"{versions.digits(2)}: confusion matrix" in section
        and "true 4, predicted 9: 5 (5.0%)" in section
    )


def test_a_retrained_version_is_compared_with_its_parent_on_the_same_test(app, client, tmp_path):
    """The shipped letters model's manifest gives its figure on the test split as it is; the
    school's retrain measures parent and child on the relabelled copy. The page compares the two
    as the job measured them, never a figure of one test against a figure of another."""
    registry = app.extensions["hwr_sync"].registry
    shipped = versions.characters()
    test = "EMNIST ByMerge letters test, relabelled copy"
    recall = {label: 0.9 for label in LABEL_SETS["char"].labels}
    registry.publish(
        new_version(tmp_path / "m", versions.characters(1), name="characters"),
        by="job 3",
        metrics={
            "base": {"accuracy": 0.9469, "per_class_recall": recall, "measured_on": test},
            "parent": {
                "base": {
                    "accuracy": 0.9482,
                    "per_class_recall": {**recall, "F": 0.95},
                    "measured_on": test,
                }
            },
        },
        job_id=3,
    )
    signed_in(client)
    page = client.get("/admin/models").text
    section = re.search(r'id="model-characters">(.*?)</section>', page, re.S).group(1)
    cell = re.search(r'<td class="num parent-same">([^<]*)<span class="hint">([^<]*)', section)
    assert cell.group(1).strip() == f"{shipped}: 94.82%" and cell.group(2) == "(-0.13 points)"
    chart = re.search(r"<svg.*?</svg>", section, re.S).group(0)
    titles = re.findall(r"<title>([^<]*)</title>", chart)
    assert f"{shipped}: 94.82%" in titles and f"{versions.characters(1)}: 94.69%" in titles
    assert not any(versions.shown_accuracy("characters") in t for t in titles)  # another test
    assert f"each on {test}" in section
    # F's recall is shaded against the parent's on the same test (0.95): it fell, shown red
    assert re.search(
        r'data-label="F"><th scope="row">F</th>\s*<td class="num" data-kind="bad">', section
    )


def test_roll_out_to_a_group_reaches_only_its_devices(app, client, tmp_path: Path):
    in_group = device_headers(app, "room-1", group="year-3")
    other = device_headers(app, "room-2")
    registry = app.extensions["hwr_sync"].registry
    registry.publish(new_version(tmp_path / "m", versions.digits(1)), by="t")
    registry.rollback("digits", versions.digits(), by="t")
    token = signed_in(client)
    r = client.post(
        "/admin/models/rollout",
        data={
            "csrf_token": token,
            "name": "digits",
            "version": versions.digits(1),
            "group": "year-3",
        },
    )
    assert r.status_code == 303
    assert "released to the devices of group year-3" in client.get("/admin/models").text
    assert models_as_device(client, in_group)["digit"] == versions.digits(1)
    assert models_as_device(client, other)["digit"] == versions.digits()
    client.post(
        "/admin/models/rollout",
        data={"csrf_token": token, "name": "digits", "version": versions.digits(1), "group": ""},
    )
    assert models_as_device(client, other)["digit"] == versions.digits(1)
    page = client.get("/admin/").text
    assert re.search(r'data-device="room-1">.*?year-3', page, re.S)
