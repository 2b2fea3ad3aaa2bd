"""The viewer in headless Chromium against a real ``hwr-edge --tunnel`` (the fake ngrok agent):
the device's page draws, two remote viewer pages see it, a wrong token sees nothing, and a
viewer page cannot make the device store anything."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, draw_with_mouse, free_port
from tests.test_edge_process import Edge, edge_models
from tests.test_tunnel_wiring import VIEWER_TOKEN, Agent, edge_config, wait_for

pytest.importorskip("pyngrok")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

SLOW_MS = 90_000
PLUS = [
    [[70.0, 140.0], [105.0, 140.0], [140.0, 140.0], [175.0, 140.0], [210.0, 140.0]],
    [[140.0, 70.0], [140.0, 105.0], [140.0, 140.0], [140.0, 175.0], [140.0, 210.0]],
]
DOMAIN = "tunnel.test"  # not on Chromium's HSTS preload list, unlike ngrok-free.app


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> Iterator[tuple[Edge, str]]:
    """hwr-edge --tunnel with its tunnel open: (the edge, the tunnel's host)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium package)")
    edge_models()
    work = tmp_path_factory.mktemp("viewer-browser")
    agent = Agent(work / "agent")
    env = {**agent.env(), "FAKE_NGROK_DOMAIN": DOMAIN, "HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN}
    edge = Edge(work / "data", "--config", str(edge_config(work, agent)), "--tunnel", env=env)
    try:
        tunnel = wait_for(
            lambda: (t := edge.health()["tunnel"])["state"] == "open" and t, 15, "no tunnel"
        )
        yield edge, urlsplit(tunnel["url"]).netloc
    finally:
        edge.stop()


@pytest.fixture(scope="module")
def browser(device):
    """Chromium that reaches the tunnel's host at the device, as the ngrok agent would."""
    sync_api = pytest.importorskip("playwright.sync_api")
    edge, host = device
    port = urlsplit(edge.url).port
    args = [
        *CHROMIUM_ARGS,
        f"--host-resolver-rules=MAP {host} 127.0.0.1:{port}",
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
    ]
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield chromium
        finally:
            chromium.close()


def viewer_page(browser, host: str, token: str):
    """A remote viewer page in its own browser context, signed in with ``token``."""
    # The page's CSP forbids eval, which Playwright's string predicates use; the test bypasses it.
    context = browser.new_context(viewport={"width": 900, "height": 700}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(SLOW_MS)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"http://{host}/viewer")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#token", token)
    page.click("#signin-button")
    return page, sockets


def pupil_page(browser, url: str):
    """The device's canvas page on the 800x480 screen, once its socket is open."""
    page = browser.new_context(viewport={"width": 800, "height": 480}).new_page()
    page.set_default_timeout(SLOW_MS)
    page.goto(url)
    page.wait_for_selector("#conn[data-state='open']")
    return page


def stored(edge: Edge) -> dict:
    health = edge.health()
    return {"corrections": health["corrections"], "pending": health["pending"]}


def test_strokes_drawn_on_the_device_appear_on_two_viewer_pages(device, browser):
    edge, host = device
    viewers = [viewer_page(browser, host, VIEWER_TOKEN)[0] for _ in range(2)]
    for page in viewers:
        page.wait_for_selector("#conn[data-state='open']")
        page.wait_for_function("window.hwrViewer && window.hwrViewer.seq !== null")
    pupil = pupil_page(browser, edge.url)
    pupil_context = pupil.context
    pupil.wait_for_selector("#watching:not([hidden])")  # the pupil sees that someone watches
    assert pupil.text_content("#watching") == "2 watching"

    draw_with_mouse(pupil, PLUS)
    # the final answer for the whole drawing: a live guess for its first stroke may be shown
    # first (and on a busy machine read here), and the viewers end on the final one
    pupil.wait_for_function(
        "(() => { const a = window.hwrApp, p = a.prediction;"
        " return document.getElementById('result').dataset.final === 'true' && p !== null"
        " && p.strokes.flat().length === a.pad.snapshot().flat().length; })()"
    )
    drawn = pupil.evaluate("window.hwrApp.pad.snapshot()")
    assert len(drawn) == 2
    label = pupil.text_content("#pred-label")
    for page in viewers:
        page.wait_for_function(
            "(n) => window.hwrViewer.strokes.flat().length === n", arg=sum(map(len, drawn))
        )
        assert page.evaluate("window.hwrViewer.strokes") == drawn
        assert page.get_attribute("#canvas", "data-strokes") == "2"
        page.wait_for_function(
            "(l) => document.getElementById('pred-label').textContent === l", arg=label
        )
    pupil.click("#clear")  # the pupil wipes the drawing: what the teachers see is empty too
    for page in viewers:
        page.wait_for_function("window.hwrViewer.strokes.length === 0")
        assert page.get_attribute("#canvas", "data-strokes") == "0"
    for page in viewers:
        page.click("#signout")
        page.wait_for_selector("#signin:not([hidden])")
        page.context.close()
    pupil.wait_for_selector("#watching", state="hidden")
    pupil_context.close()


def test_the_pupils_answer_stays_in_view_and_a_restart_keeps_the_sign_in(browser, tmp_path):
    """The page clears its drawing once an answer is saved: the viewer still shows the answer.
    While the device restarts the viewer says it is not answering (not that the sign-in ended),
    and the same sign-in watches again once the device is back."""
    port = free_port()
    env = {"HWR_EDGE_VIEWER_TOKEN": VIEWER_TOKEN}
    edge = Edge(tmp_path / "data", "--port", str(port), env=env)
    try:
        viewer, _ = viewer_page(browser, f"127.0.0.1:{port}", VIEWER_TOKEN)
        viewer.wait_for_selector("#conn[data-state='open']")
        pupil = pupil_page(browser, edge.url)
        draw_with_mouse(pupil, PLUS)
        pupil.wait_for_selector("#result[data-final='true']")
        guess = pupil.text_content("#pred-label")
        label = "8" if guess == "0" else "0"
        pupil.click(f"#keypad [data-label='{label}']")
        pupil.wait_for_selector("#correction[data-state=ok]")
        viewer.wait_for_selector("#answer:not([hidden])")
        viewer.wait_for_function("window.hwrViewer.strokes.length === 0")  # the page cleared
        assert viewer.text_content("#answer") == f"Last answer: corrected from {guess} to {label}"
        pupil.context.close()

        edge.stop()
        viewer.wait_for_function(
            "document.getElementById('conn').textContent.startsWith('Device not answering')"
        )
        assert viewer.is_hidden("#signin")
        edge = Edge(tmp_path / "data", "--port", str(port), env=env)
        viewer.wait_for_selector("#conn[data-state='open']")
        assert viewer.is_hidden("#signin") and viewer.is_visible("#live")
        viewer.context.close()
    finally:
        edge.stop()


def test_a_viewer_with_a_wrong_token_gets_nothing(device, browser):
    edge, host = device
    page, sockets = viewer_page(browser, host, "a-wrong-token-of-the-right-length")
    page.wait_for_function("document.getElementById('signin-error').textContent.length > 0")
    assert "not this device's viewer token" in page.text_content("#signin-error")
    assert page.is_hidden("#live")
    assert page.evaluate("window.hwrViewer.strokes") == []
    page.wait_for_timeout(500)
    assert sockets == []  # no socket was even tried
    status = page.evaluate(
        """() => new Promise((resolve) => {
             const ws = new WebSocket(`ws://${location.host}/viewer/ws`);
             ws.onopen = () => resolve("open");
             ws.onerror = () => resolve("refused");
           })"""
    )
    assert status == "refused"
    page.context.close()


def test_a_viewer_page_cannot_make_the_device_store_anything(device, browser):
    edge, host = device
    before = stored(edge)
    page, _ = viewer_page(browser, host, VIEWER_TOKEN)
    page.wait_for_selector("#conn[data-state='open']")
    statuses = page.evaluate(
        """async (strokes) => {
             const out = {};
             const bodies = {
               "/api/predict": {mode: "digit", strokes},
               "/api/correct": {mode: "digit", strokes, label: "7"},
               "/predict": {mode: "digit", image: "iVBORw0KGgo="},
               "/correct": {mode: "digit", image: "iVBORw0KGgo=", label: "7"},
             };
             for (const [path, body] of Object.entries(bodies)) {
               const res = await fetch(path, {method: "POST", body: JSON.stringify(body),
                 headers: {"Content-Type": "application/json"}});
               out[path] = [res.status, (await res.json()).error.code];
             }
             for (const path of ["/", "/healthz", "/static/app.js"]) {
               out[path] = [(await fetch(path)).status];
             }
             out["/ws"] = await new Promise((resolve) => {
               const ws = new WebSocket(`ws://${location.host}/ws`);
               ws.onopen = () => resolve("open");
               ws.onerror = () => resolve("refused");
             });
             return out;
           }""",
        PLUS,
    )
    for path in ("/api/predict", "/api/correct", "/predict", "/correct"):
        assert statuses[path] == [403, "remote_only_viewer"], (path, statuses)
    for path in ("/", "/healthz", "/static/app.js"):
        assert statuses[path] == [403], (path, statuses)
    assert statuses["/ws"] == "refused"
    writes = [
        {"type": "predict", "seq": 1, "mode": "digit", "strokes": PLUS},
        {"type": "correct", "seq": 2, "mode": "digit", "strokes": PLUS, "label": "7"},
        {"type": "correct", "seq": 3, "id": "0" * 32, "label": "7"},
        {"type": "withdraw", "seq": 4, "id": "0" * 32},
        {"type": "confirm", "seq": 5, "id": "0" * 32},
        {"type": "health", "seq": 6, "mode": "digit", "strokes": PLUS},
        {"type": "stats", "seq": 7},
        {"type": "corrections", "seq": 8},
    ]
    replies = page.evaluate(
        """(writes) => new Promise((resolve) => {
             const ws = new WebSocket(`ws://${location.host}/viewer/ws`);
             const got = [];
             ws.onmessage = (e) => {
               const frame = JSON.parse(e.data);
               for (const msg of Array.isArray(frame) ? frame : [frame]) {
                 if (msg.type === "snapshot") {
                   for (const w of writes) ws.send(JSON.stringify(w));
                 } else if (msg.type === "error") got.push(msg);
               }
               if (got.length === writes.length) { ws.close(); resolve(got); }
             };
           })""",
        writes,
    )
    assert [(r["type"], r["seq"], r["error"]["code"]) for r in replies] == [
        ("error", w["seq"], "read_only") for w in writes
    ]
    assert stored(edge) == before
    assert before["pending"] == 0
    assert requests.get(edge.url + "healthz", timeout=10).json()["viewers"] >= 1
    page.context.close()
