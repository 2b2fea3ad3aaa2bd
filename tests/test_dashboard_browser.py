"""The admin dashboard in headless Chromium against a real ``hwr-sync-server serve``.

Devices are added with the CLI, their corrections and heartbeats go through the real device
API, and the worker's scoring runs (in this process, with the real merge code and the shipped
model) on the server's database; then a person signs in, looks at every page, decides on the
quarantine, rolls a version out to a group, rolls back, starts a retrain and watches it.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from sync_server import jobs, merge
from sync_server.config import load_config
from sync_server.state import open_state
from tests import versions
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS
from tests.sync_harness import ADMIN_TOKEN, MODELS, SyncServer, last_line, run_cli, wait_for
from tests.sync_server_helpers import item, new_version

pytestmark = pytest.mark.browser

SLOW_MS = 30_000
WHO = "Ms Rivera"
SCREENSHOT_ENV = "HWR_DASHBOARD_SCREENSHOT"  # a path: save the README's screenshot there


def image(seed: int) -> str:
    """A distinct model input (base64 float32), as a device sends it."""
    a = np.random.default_rng(seed).random(784, dtype=np.float32) * 0.2
    a[300:320] = 1.0
    return base64.b64encode(a.astype("<f4").tobytes()).decode()


class School:
    """The server, its devices' tokens and what was sent."""

    def __init__(self, server: SyncServer, tokens: dict[str, str], ties: list[str]):
        self.server = server
        self.url = server.url
        self.tokens = tokens
        self.ties = ties  # corrections quarantined by a tied vote

    def device_get(self, name: str, path: str) -> dict:
        r = requests.get(
            self.url + path, headers={"Authorization": f"Bearer {self.tokens[name]}"}, timeout=10
        )
        r.raise_for_status()
        return r.json()

    def serves(self, name: str) -> str:
        """The digits version device ``name`` is told to serve (GET /api/v1/models)."""
        return self.device_get(name, "/api/v1/models")["models"]["digit"]["release"]["release"][
            "version"
        ]


def _state(data_dir: Path):
    return open_state(
        load_config(
            env={"HWR_SYNC_ADMIN_TOKEN": ADMIN_TOKEN},
            overrides={"data_dir": data_dir, "models_dir": MODELS},
        )
    )


@pytest.fixture(scope="module")
def school(tmp_path_factory: pytest.TempPathFactory) -> Iterator[School]:
    work = tmp_path_factory.mktemp("dashboard")
    data = work / "server"
    run_cli("init", data_dir=data)
    tokens = {}
    for name, group in (("room-1", "class-4b"), ("room-2", None), ("room-3", None)):
        args = ["add-device", name] + (["--group", group] if group else [])
        tokens[name] = last_line(run_cli(*args, data_dir=data))
    run_cli("publish", str(new_version(work / "new", versions.digits(1))), data_dir=data)
    server = SyncServer(data, env={"HWR_SYNC_START_WORKER": "false"})
    try:

        def send(device: str, items: list[dict]) -> None:
            r = requests.post(
                server.url + "/api/v1/corrections",
                json={"corrections": items},
                headers={"Authorization": f"Bearer {tokens[device]}"},
                timeout=30,
            )
            assert [x["status"] for x in r.json()["results"]] == ["stored"] * len(items)

        def made(i: int) -> float:  # corrections made over the last days, for the plots
            return time.time() - (i * 7 % 10) * 86400.0 - i * 60.0

        send(
            "room-1", [item(label=str(i % 10), image=image(i), created=made(i)) for i in range(12)]
        )
        send(
            "room-2",
            [item(label=str(i % 10), image=image(100 + i), created=made(i)) for i in range(5)],
        )
        send("room-3", [item(mode="char", label="f", image=image(200 + i)) for i in range(3)])
        # the same drawings labelled differently by two devices: tied votes, quarantined
        ties = []
        for k, (a, b) in enumerate((("3", "8"), ("2", "5"))):
            one, two = item(label=a, image=image(900 + k)), item(label=b, image=image(900 + k))
            send("room-1", [one])
            send("room-2", [two])
            ties += [one["id"], two["id"]]
        for name, tunnel in (("room-1", "https://room-1.example.ngrok.app/"), ("room-2", None)):
            r = requests.post(
                server.url + "/api/v1/heartbeat",
                json={
                    "models": {"digit": {"name": "digits", "version": versions.digits(1)}},
                    "pending": 2,
                    "tunnel_url": tunnel,
                },
                headers={"Authorization": f"Bearer {tokens[name]}"},
                timeout=10,
            )
            assert r.status_code == 200
        # what the worker does after each batch: score with the current model, then assess
        st = _state(data)
        try:
            ctx = jobs.WorkerContext(st)
            ctx.score("digit")
            ctx.score("char")
            quarantined = {q["id"] for q in merge.quarantine(st.engine, status="open")}
        finally:
            st.close()
        assert set(ties) <= quarantined
        yield School(server, tokens, ties)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright; skipped where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium package; never download one)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page with every URL it asked for and every console error (a CSP refusal is one)."""

    def __init__(self, page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("dialog", lambda d: d.accept())  # the rollback's confirmation
        page.set_default_timeout(SLOW_MS)


@pytest.fixture
def page(browser, school: School) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        w = Watched(context.new_page())
        yield w
        assert w.errors == [], w.errors
        local = school.url + "/"
        assert [u for u in w.urls if not u.startswith(local)] == []
    finally:
        context.close()


def sign_in(w: Watched, url: str, token: str = ADMIN_TOKEN) -> None:
    w.page.goto(url + "/admin/")
    assert "/admin/signin" in w.page.url
    w.page.fill("#name", WHO)
    w.page.fill("#token", token)
    w.page.click("#signin")


def test_sign_in_refuses_a_wrong_token_and_sign_out_ends_the_session(page, school, browser):
    p = page.page
    sign_in(page, school.url, token="wrong-token")
    assert p.locator("#signin-error").inner_text() == "That is not the admin token."
    page.errors.clear()  # the 401 of the refused sign-in is logged by the console
    sign_in(page, school.url)
    p.wait_for_url(school.url + "/admin/")
    assert p.locator("#who").inner_text() == WHO
    cookies = p.context.cookies()
    session = next(c for c in cookies if c["name"] == "hwr_admin")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]
    p.click("#signout")
    p.wait_for_url(school.url + "/admin/signin")
    p.goto(school.url + "/admin/models")
    assert "/admin/signin" in p.url
    # the cookie from before signing out opens nothing in a fresh browser either
    other = browser.new_context()
    try:
        other.add_cookies([session])
        o = other.new_page()
        o.goto(school.url + "/admin/")
        assert "/admin/signin" in o.url
    finally:
        other.close()


def test_each_page_renders_with_its_data(page, school):
    p = page.page
    sign_in(page, school.url)
    p.wait_for_url(school.url + "/admin/")
    row = p.locator('tr[data-device="room-1"]')
    assert "online" in row.inner_text() and "class-4b" in row.inner_text()
    assert f"digits {versions.digits(1)}" in row.inner_text()
    assert row.locator("a[href='https://room-1.example.ngrok.app/']").count() == 1
    assert "offline" in p.locator('tr[data-device="room-3"]').inner_text()
    assert row.locator("td.num").nth(1).inner_text() == "14"  # its corrections
    p.click("nav >> text=Corrections")
    assert p.locator("#total-digit").inner_text() == "21"
    assert p.locator("#total-char").inner_text() == "3"
    assert p.locator("svg.plot").count() >= 4
    p.click("nav >> text=Quarantine")
    for cid in school.ties:
        assert p.locator(f'li[data-uuid="{cid}"] img').count() == 1
    # every drawing's image loaded (a broken one has no natural width)
    widths = p.eval_on_selector_all(".drawing img", "els => els.map(e => e.naturalWidth)")
    assert widths and set(widths) == {28}
    p.click("nav >> text=Models")
    table = p.locator('table[data-model="digits"]')
    assert versions.digits(1) in table.locator("thead").inner_text()
    assert versions.shown_accuracy("digits") in table.inner_text()
    assert p.locator("#model-digits svg.plot").count() >= 1
    p.click("nav >> text=Jobs")
    assert p.locator("#retrain").count() == 1
    shot = Path(os.environ.get(SCREENSHOT_ENV) or (Path(school.server.data_dir).parent / "d.png"))
    p.click("nav >> text=Devices")
    p.screenshot(path=str(shot))
    assert 0 < shot.stat().st_size < 300_000


def test_quarantine_decisions_are_recorded_with_who_and_when(page, school):
    p = page.page
    sign_in(page, school.url)
    p.goto(school.url + "/admin/quarantine")
    first, *rest = school.ties
    before = time.time()
    p.click(f'li[data-uuid="{first}"] button.approve-one')
    assert "1 correction approved by Ms Rivera" in p.locator(".flash").inner_text()
    assert p.locator(f'li[data-uuid="{first}"]').count() == 0  # no longer waiting
    for cid in rest:
        p.check(f'li[data-uuid="{cid}"] input[name="ids"]')
    p.click("#reject-selected")
    assert "3 corrections rejected by Ms Rivera" in p.locator(".flash").inner_text()
    p.click('nav.tabs a:text-is("Rejected")')
    for cid in rest:
        card = p.locator(f'li[data-uuid="{cid}"]')
        assert card.get_attribute("data-review") == "rejected"
        assert card.locator(".by").inner_text() == WHO
    log = p.locator("#decisions").inner_text()
    assert log.count(WHO) >= 4
    st = _state(Path(school.server.data_dir))
    try:
        approved = merge.quarantine(st.engine, status="approved")
        rejected = {q["id"]: q for q in merge.quarantine(st.engine, status="rejected")}
        made = [d for d in merge.decisions(st.engine) if d["correction_id"] in school.ties]
    finally:
        st.close()
    assert [q["id"] for q in approved] == [first] and approved[0]["reviewed_by"] == WHO
    assert set(rest) <= set(rejected)
    assert all(rejected[c]["reviewed_by"] == WHO for c in rest)
    assert len(made) == 4 and all(d["by"] == WHO and d["at"] >= before - 1 for d in made)


def test_roll_out_to_a_group_then_roll_back(page, school):
    p = page.page
    shipped, new = versions.digits(), versions.digits(1)
    assert school.serves("room-1") == new and school.serves("room-2") == new
    sign_in(page, school.url)
    p.goto(school.url + "/admin/models")
    p.click(f'form.rollback button[data-version="{shipped}"]')  # the page asks first: accepted
    assert f"digits {shipped} is the current release again" in p.locator(".flash").inner_text()
    assert school.serves("room-1") == shipped and school.serves("room-2") == shipped
    hb = requests.post(
        school.url + "/api/v1/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {school.tokens['room-2']}"},
        timeout=10,
    ).json()
    assert hb["models"]["digit"]["version"] == shipped
    # the new version to group class-4b only: room-1 (in it) swaps, room-2 keeps the shipped one
    form = p.locator('table[data-model="digits"] form.rollout').filter(
        has=p.locator(f'input[name="version"][value="{new}"]')
    )
    form.locator("select").select_option("class-4b")
    form.locator("button").click()
    assert "released to the devices of group class-4b" in p.locator(".flash").inner_text()
    assert school.serves("room-1") == new and school.serves("room-2") == shipped
    releases = p.locator("#releases").inner_text()
    assert "class-4b" in releases and WHO in releases


def test_a_retrain_job_shows_live_progress(page, school):
    p = page.page
    sign_in(page, school.url)
    p.goto(school.url + "/admin/jobs")
    p.select_option("#retrain-name", "digits")
    p.click("#retrain")
    assert "Retraining digits" in p.locator(".flash").inner_text()
    assert p.input_value("#retrain-name") == "digits"  # not back on the first model listed
    row = p.locator("#jobs tbody tr[data-job]").first
    job_id = int(row.get_attribute("data-job"))
    assert row.locator(".status").inner_text() == "queued"
    # what the worker writes as it goes (no worker runs here: TensorFlow is not needed)
    st = _state(Path(school.server.data_dir))
    try:
        assert jobs.claim(st.engine, job_id) is not None
        jobs.Progress(st.engine, job_id).epoch(2, 3, 0.5)
        wait_for(
            lambda: (
                row.locator(".status").inner_text() == "running"
                and row.locator("progress").get_attribute("value") not in (None, "0")
            ),
            30,
            "the page to show the job running",
        )
        assert "epoch 2/3" in row.locator(".stage").inner_text()
        assert float(p.eval_on_selector("#jobs tbody tr[data-job] progress", "e => e.value")) == 45
        jobs.finish(st.engine, job_id, "refused", "held-out accuracy did not rise")
        wait_for(lambda: row.locator(".status").inner_text() == "refused", 30, "the job's end")
        assert "did not rise" in row.locator(".result").inner_text()
        wait_for(lambda: row.locator(".stage").inner_text() == "stopped at the gate", 30, "words")
        assert row.locator("progress").is_hidden()  # an ended job has no bar stuck part-way
    finally:
        st.close()


def test_no_page_is_wider_than_a_phone(browser, school):
    """At 390 px every page fits the screen's width: a wide table scrolls in its own box."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        w = Watched(context.new_page())
        sign_in(w, school.url)
        w.page.wait_for_url(school.url + "/admin/")
        wide = {}
        for path in ("", "corrections", "quarantine", "models", "jobs"):
            w.page.goto(f"{school.url}/admin/{path}")
            w.page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            width = w.page.evaluate("document.documentElement.scrollWidth")
            if width > 390:
                wide[path or "devices"] = width
        assert wide == {}
    finally:
        context.close()


def _heartbeat(school: School, token: str) -> int:
    r = requests.post(
        school.url + "/api/v1/heartbeat",
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return r.status_code


def test_add_a_device_revoke_it_and_give_it_a_new_token(page, school):
    p = page.page
    sign_in(page, school.url)
    p.wait_for_url(school.url + "/admin/")
    p.fill("#device-name", "room-9")
    p.fill("#device-group", "year-5")
    p.click("#add-device-form button")
    assert "room-9 is registered in group year-5." in p.locator(".flash").inner_text()
    token = p.locator("#token").inner_text()
    settings = p.locator("#device-settings").inner_text()
    assert f"HWR_EDGE_SYNC_TOKEN={token}" in settings and f'sync_url = "{school.url}"' in settings
    assert p.locator("#public-key").inner_text() in settings
    assert _heartbeat(school, token) == 200
    p.click("text=Back to the devices")
    row = p.locator('tr[data-device="room-9"]')
    assert "year-5" in row.inner_text() and token not in p.content()
    row.locator("form.revoke button").click()  # the page asks first: accepted
    assert "room-9 is revoked" in p.locator(".flash").inner_text()
    assert "revoked" in row.inner_text() and _heartbeat(school, token) == 401
    row.locator("form.new-token button").click()
    assert "room-9 has a new token" in p.locator(".flash").inner_text()
    new = p.locator("#token").inner_text()
    assert new != token and _heartbeat(school, new) == 200 and _heartbeat(school, token) == 401


def test_a_form_post_without_its_csrf_token_is_refused(page, school):
    p = page.page
    sign_in(page, school.url)
    p.wait_for_url(school.url + "/admin/")
    before = school.serves("room-2")
    r = p.request.post(
        school.url + "/admin/models/rollback",
        form={"name": "digits", "version": versions.digits(1)},
    )
    assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed"
    assert school.serves("room-2") == before
    token = p.locator('input[name="csrf_token"]').first.get_attribute("value")
    r = p.request.post(school.url + "/admin/signout", form={"csrf_token": token + "x"})
    assert r.status == 403
    assert p.request.get(school.url + "/admin/jobs.json").status == 200  # still signed in


# Every route of the dashboard but sign-in and its static files (test_dashboard.py checks the
# URL map has exactly these 13).
ROUTES = [
    ("GET", "/admin/"),
    ("GET", "/admin/corrections"),
    ("GET", "/admin/quarantine"),
    ("GET", "/admin/models"),
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs.json"),
    ("GET", "/admin/drawings/00000000-0000-4000-8000-000000000000.png"),
    ("POST", "/admin/signout"),
    ("POST", "/admin/quarantine/decide"),
    ("POST", "/admin/models/publish"),
    ("POST", "/admin/models/rollout"),
    ("POST", "/admin/models/rollback"),
    ("POST", "/admin/jobs/retrain"),
    ("POST", "/admin/devices/add"),
    ("POST", "/admin/devices/new-token"),
    ("POST", "/admin/devices/revoke"),
]


def test_every_admin_route_of_the_real_server_is_refused_without_a_session(school):
    for method, path in ROUTES:
        r = requests.request(method, school.url + path, allow_redirects=False, timeout=10)
        if method == "GET" and not path.endswith((".json", ".png")):
            assert r.status_code == 303 and "/admin/signin" in r.headers["Location"], path
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["X-Frame-Options"] == "DENY"
