"""The canvas page in headless Chromium against a real hwr-edge: draw, see, correct, reload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import h5py
import pytest

from tests.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    EdgeProcess,
    draw_with_mouse,
    draw_with_touch,
    fit_strokes,
    hwr_edge_command,
    models_for_edge,
    to_screen,
)

pytestmark = pytest.mark.browser

LETTER_CLASSES = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("abdefghnqrt")
TOUCHSCREEN = {"width": 800, "height": 480}
PHONE = {"width": 390, "height": 844}
# Every wait of a page: generous, since a busy two-core machine can take many seconds to load
# a page or answer; a test that passes is not slowed down by it.
SLOW_MS = 90_000
# A plus sign and an L, in canvas coordinates: two strokes each, easy to undo one by one.
PLUS = [
    [[70.0, 140.0], [140.0, 140.0], [210.0, 140.0]],
    [[140.0, 70.0], [140.0, 140.0], [140.0, 210.0]],
]
LETTER_L = [
    [[90.0, 50.0], [90.0, 130.0], [90.0, 220.0]],
    [[90.0, 220.0], [150.0, 220.0], [200.0, 220.0]],
]


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright; skipped where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium package; never download one)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def edge_models() -> Path:
    """The models the server loads: the shipped ones in models_export/."""
    if hwr_edge_command() is None:
        pytest.skip("hwr-edge is not installed (pip install -e '.[edge]')")
    models = models_for_edge()
    if models is None:
        pytest.skip("no shipped models in models_export/")
    return models


def start_edge(work: Path, models: Path) -> EdgeProcess:
    """A real hwr-edge process with an empty data directory under work, answering /healthz."""
    server = EdgeProcess(hwr_edge_command(), work / "data", models, work / "edge.log")
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def edge(tmp_path: Path, edge_models: Path) -> Iterator[EdgeProcess]:
    """A server of this test's own, for tests that count corrections or stop the server."""
    server = start_edge(tmp_path, edge_models)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_edge(
    tmp_path_factory: pytest.TempPathFactory, edge_models: Path
) -> Iterator[EdgeProcess]:
    """One server for the tests that neither count corrections nor stop it."""
    server = start_edge(tmp_path_factory.mktemp("shared-edge"), edge_models)
    try:
        yield server
    finally:
        server.stop()


class PageRecorder:
    """Every request and WebSocket frame a page makes, for asserting on what went where."""

    def __init__(self, page) -> None:
        self.urls: list[str] = []
        self.sent: list[dict] = []
        self.received: list[dict] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("websocket", self._socket)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

    def _socket(self, ws) -> None:
        self.urls.append(ws.url)
        ws.on("framesent", lambda f: self.sent.append(_json(f)))
        ws.on("framereceived", lambda f: self.received.append(_json(f)))

    def sent_of(self, kind: str) -> list[dict]:
        return [m for m in self.sent if m.get("type") == kind]


def _json(frame: object) -> dict:
    text = frame if isinstance(frame, str) else getattr(frame, "payload", frame)
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def open_page(browser, url: str, *, viewport=TOUCHSCREEN, touch: bool = False, scale: float = 1):
    """A fresh context and page on the canvas, once its socket is open: (context, page, recorder)."""
    context = browser.new_context(viewport=viewport, has_touch=touch, device_scale_factor=scale)
    context.set_default_timeout(SLOW_MS)
    page = context.new_page()
    # Which kinds of pointer reached the canvas (mouse, touch, pen).
    page.add_init_script(
        "window.__pointerTypes = [];"
        "addEventListener('pointerdown', e => window.__pointerTypes.push(e.pointerType), true);"
    )
    recorder = PageRecorder(page)
    page.goto(url + "/")
    page.wait_for_selector("#conn[data-state=open]", timeout=SLOW_MS)
    return context, page, recorder


@pytest.fixture
def page_on_edge(
    playwright_browser, shared_edge
) -> Iterator[tuple[object, PageRecorder, EdgeProcess]]:
    """The canvas at 800x480 with a mouse, on the shared server: (page, recorder, server)."""
    context, page, recorder = open_page(playwright_browser, shared_edge.url)
    try:
        yield page, recorder, shared_edge
    finally:
        context.close()
    assert recorder.errors == [], f"the page reported errors: {recorder.errors}"


@pytest.fixture(scope="module")
def pen_digits(data_dir: Path) -> dict[int, list]:
    """One pendigits test drawing per digit, fitted into the canvas."""
    from trainer.data import load_pendigits

    chosen: dict[int, list] = {}
    for sample in load_pendigits(data_dir, "test"):
        if sample.label not in chosen and len(sample.strokes) >= 1:
            chosen[sample.label] = fit_strokes(sample.strokes)
        if len(chosen) == 10:
            break
    return chosen


def stored_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a corrections snapshot, read with h5py alone: id, label, predicted."""
    with h5py.File(path, "r") as f:
        columns = {name: [_text(v) for v in f[name][()]] for name in ("id", "label", "predicted")}
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def wait_for_prediction(page, timeout: float = SLOW_MS) -> dict[str, object]:
    """Wait until a guess is on screen; return what the page shows."""
    page.wait_for_selector("#result[data-state=shown]", timeout=timeout)
    return {
        "label": page.inner_text("#pred-label"),
        "top": page.eval_on_selector_all("#pred-top li", "els => els.map(e => e.dataset.label)"),
        "percents": page.eval_on_selector_all(
            "#pred-top .top-p", "els => els.map(e => e.textContent)"
        ),
        "source": page.get_attribute("#pred-source", "data-source"),
        "live": page.inner_text("#pred-live"),
    }


def ink_pixels(page) -> int:
    """How many pixels of the canvas's backing store are darker than the paper."""
    return page.evaluate(
        """() => {
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++;
        return n;
    }"""
    )


# ---- tests ---------------------------------------------------------------------------------


def test_mouse_drawing_shows_a_live_guess_while_drawing_and_after(page_on_edge, pen_digits):
    page, recorder, _ = page_on_edge
    stroke = to_screen(page, pen_digits[2])[0]
    assert len(stroke) > 10
    part = len(stroke) * 3 // 5
    page.mouse.move(*stroke[0])
    page.mouse.down()
    for x, y in stroke[1:part]:
        page.mouse.move(x, y)
        page.wait_for_timeout(16)
    # Live answers read the first part of the stroke (for this 2, they read 7 at 96%).
    page.wait_for_timeout(400)
    for x, y in stroke[part:]:
        page.mouse.move(x, y)
    # The pen rests, still down, and moves no more: no new request goes, and the answer to
    # the whole stroke, which may disagree with the one before, is shown once the pen rested.
    whole = None
    for _ in range(300):  # the throttle sends the whole stroke within 150 ms (slower if loaded)
        page.wait_for_timeout(100)
        whole = recorder.sent_of("predict")[-1]
        if sum(len(s) for s in whole["strokes"]) >= len(stroke) - 1:
            break
    else:
        pytest.fail(f"the whole stroke was never sent: {recorder.sent_of('predict')}")
    page.wait_for_selector(f"#result[data-state=shown][data-seq='{whole['seq']}']")
    live = wait_for_prediction(page)
    assert page.get_attribute("#result", "data-final") == "false"
    assert page.evaluate("window.__pointerTypes") == ["mouse"]
    live_requests = recorder.sent_of("predict")
    assert live_requests, "no predict message went over the WebSocket while drawing"
    page.mouse.up()
    for rest in to_screen(page, pen_digits[2])[1:]:
        page.mouse.move(*rest[0])
        page.mouse.down()
        for x, y in rest[1:]:
            page.mouse.move(x, y)
        page.mouse.up()
    page.wait_for_function(
        "() => document.getElementById('pred-live').textContent.startsWith('Looks like')"
    )
    final = wait_for_prediction(page)
    assert live["label"] in "0123456789"
    assert final["label"] in "0123456789" and len(final["label"]) == 1
    # Entries that round to 0% are left out of the best guesses.
    assert 1 <= len(final["top"]) <= 3 and final["top"][0] == final["label"]
    assert "0%" not in final["percents"]
    assert all(p.endswith("%") for p in final["percents"])
    assert final["source"] in ("model", "personal")
    # The last message holds the whole drawing, in 280x280 logical coordinates.
    last = recorder.sent_of("predict")[-1]
    assert last["mode"] == "digit"
    assert len(last["strokes"]) == len(pen_digits[2])
    points = [p for s in last["strokes"] for p in s]
    assert all(0 <= x <= 280 and 0 <= y <= 280 for x, y in points)
    answers = [m for m in recorder.received if m.get("type") == "prediction"]
    assert answers and answers[-1]["seq"] == last["seq"]


def test_touch_drawing_correction_is_stored_on_disk_and_counted_after_reload(
    playwright_browser, edge, edge_models, pen_digits
):
    context, page, recorder = open_page(playwright_browser, edge.url, touch=True)
    try:
        page.wait_for_selector("#pending[data-count='0']")
        draw_with_touch(page, pen_digits[7])
        assert set(page.evaluate("window.__pointerTypes")) == {"touch"}
        shown = wait_for_prediction(page)
        assert shown["label"] in "0123456789"
        assert page.evaluate("window.scrollX + window.scrollY") == 0

        page.locator("#keypad [data-label='7']").tap()
        page.wait_for_selector("#correction[data-state=ok]")
        assert page.inner_text("#correction") == "Saved \u2713 7"
        corrected = [m for m in recorder.received if m.get("type") == "corrected"]
        assert len(corrected) == 1 and corrected[0]["stored"] is True
        correction_id = corrected[0]["correction_id"]
        correct_msg = recorder.sent_of("correct")[0]
        prediction_ids = [m["id"] for m in recorder.received if m.get("type") == "prediction"]
        assert correct_msg["id"] == prediction_ids[-1] and correct_msg["label"] == "7"
        page.wait_for_selector("#pending[data-count='1']")
    finally:
        context.close()

    # Stopped cleanly, the server has written the snapshot: the row is in the HDF5 file.
    edge.stop()
    rows = stored_rows(edge.data_dir / "custom_digits.h5")
    assert [(r["id"], r["label"]) for r in rows] == [(correction_id, "7")]
    assert rows[0]["predicted"] == shown["label"]

    # Started again on the same files, the page reloads and counts the correction as pending.
    log = edge.log_path.with_suffix(".again.log")
    again = EdgeProcess(hwr_edge_command(), edge.data_dir, edge_models, log)
    try:
        again.wait_healthy()
        assert again.health()["pending"] == 1
        context, page, _ = open_page(playwright_browser, again.url, touch=True)
        try:
            page.reload()
            page.wait_for_selector("#conn[data-state=open]")
            page.wait_for_selector("#pending[data-count='1']")
            assert page.inner_text("#pending") == "Waiting to sync: 1"
        finally:
            context.close()
    finally:
        again.stop()


def test_letters_mode_keypad_keyboard_correction_and_file(playwright_browser, edge):
    context, page, recorder = open_page(playwright_browser, edge.url)
    try:
        page.click("#mode-char")
        assert page.get_attribute("#mode-char", "aria-pressed") == "true"
        assert page.get_attribute("#mode-digit", "aria-pressed") == "false"
        keys = page.eval_on_selector_all(
            "#keypad [data-label]", "els => els.map(e => e.dataset.label)"
        )
        assert keys == LETTER_CLASSES
        draw_with_mouse(page, LETTER_L)
        shown = wait_for_prediction(page)
        assert shown["label"] in LETTER_CLASSES
        assert recorder.sent_of("predict")[-1]["mode"] == "char"

        # A lower-case letter that shares its class with the capital maps onto the capital.
        page.keyboard.press("l")
        page.wait_for_selector("#correction[data-state=ok]")
        assert page.inner_text("#correction") == "Saved \u2713 L"
        assert recorder.sent_of("correct")[-1]["label"] == "L"
        # A digit key in letters mode corrects nothing and says why.
        page.keyboard.press("4")
        assert page.get_attribute("#correction", "data-state") == "error"
        assert "Digits" in page.inner_text("#correction")
        assert len(recorder.sent_of("correct")) == 1

        # A lower-case letter with a class of its own keeps it.
        page.keyboard.press("Escape")
        draw_with_mouse(page, LETTER_L)
        wait_for_prediction(page)
        page.keyboard.press("t")
        page.wait_for_selector("#correction[data-state=ok]")
        assert page.inner_text("#correction") == "Saved \u2713 t"
        page.wait_for_selector("#pending[data-count='2']")
    finally:
        context.close()
    assert recorder.errors == [], f"the page reported errors: {recorder.errors}"

    edge.stop()
    labels = sorted(r["label"] for r in stored_rows(edge.data_dir / "custom_characters.h5"))
    assert labels == ["L", "t"]
    assert stored_rows(edge.data_dir / "custom_digits.h5") == []


def test_undo_and_clear_with_buttons_and_keys(page_on_edge):
    page, recorder, _ = page_on_edge
    draw_with_mouse(page, PLUS)
    wait_for_prediction(page)
    assert page.get_attribute("#canvas", "data-strokes") == "2"
    two_strokes = ink_pixels(page)
    assert two_strokes > 0

    before = int(page.get_attribute("#result", "data-asked"))
    page.keyboard.press("Backspace")
    assert page.get_attribute("#canvas", "data-strokes") == "1"
    one_stroke = ink_pixels(page)
    assert 0 < one_stroke < two_strokes
    # The remaining stroke is read again.
    page.wait_for_function(
        "n => { const r = document.getElementById('result').dataset;"
        " return Number(r.asked) > n && r.seq === r.asked; }",
        arg=before,
    )
    assert len(recorder.sent_of("predict")[-1]["strokes"]) == 1

    page.click("#undo")
    assert page.get_attribute("#canvas", "data-strokes") == "0"
    assert ink_pixels(page) == 0
    assert page.get_attribute("#result", "data-state") == "empty"

    draw_with_mouse(page, PLUS)
    wait_for_prediction(page)
    page.keyboard.press("Escape")
    assert page.get_attribute("#canvas", "data-strokes") == "0"
    assert ink_pixels(page) == 0
    draw_with_mouse(page, PLUS)
    page.click("#clear")
    # Answers to the drawing that was cleared must not come back on screen.
    page.wait_for_timeout(400)
    assert page.get_attribute("#result", "data-state") == "empty"
    assert page.inner_text("#pred-label") == "?"
    assert ink_pixels(page) == 0
    # Nothing to correct now: the keypad says so instead of sending.
    page.click("#keypad [data-label='3']")
    assert page.get_attribute("#correction", "data-state") == "error"
    assert recorder.sent_of("correct") == []


def test_no_request_leaves_the_device(playwright_browser, edge, pen_digits):
    context, page, recorder = open_page(playwright_browser, edge.url)
    try:
        draw_with_mouse(page, pen_digits[4])
        wait_for_prediction(page)
        page.click("#keypad [data-label='4']")
        page.wait_for_selector("#correction[data-state=ok]")
        page.click("#mode-char")
        page.reload()
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_selector("#pending[data-count='1']")
    finally:
        context.close()
    assert len(recorder.urls) >= 5
    hosts = {urlparse(u).hostname for u in recorder.urls if not u.startswith("data:")}
    assert hosts == {"127.0.0.1"}, f"requests beyond the device: {sorted(recorder.urls)}"
    paths = {urlparse(u).path for u in recorder.urls}
    assert {"/", "/static/app.js", "/static/style.css", "/ws", "/healthz"} <= paths


def test_falls_back_to_http_and_reconnects_when_the_socket_drops(
    playwright_browser, edge, pen_digits
):
    context = playwright_browser.new_context(viewport=TOUCHSCREEN)
    context.set_default_timeout(SLOW_MS)
    page = context.new_page()
    recorder = PageRecorder(page)
    refusals = {"n": 0}

    def refuse_then_pass(ws) -> None:
        # The first three sockets are dropped at once; later ones reach the real server.
        if refusals["n"] < 3:
            refusals["n"] += 1
            ws.close()
        else:
            ws.connect_to_server()

    page.route_web_socket("**/ws", refuse_then_pass)
    http_posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and http_posts.append(urlparse(r.url).path))
    try:
        page.goto(edge.url + "/")
        page.wait_for_selector("#conn[data-state=closed]")
        assert page.inner_text("#conn").startswith("Reconnecting")
        draw_with_mouse(page, pen_digits[1])
        wait_for_prediction(page)
        page.click("#keypad [data-label='1']")
        page.wait_for_selector("#correction[data-state=ok]")
        assert "/api/predict" in http_posts and "/api/correct" in http_posts
        # Backoff: the page keeps trying and gets through by itself.
        page.wait_for_selector("#conn[data-state=open]", timeout=SLOW_MS)
        assert page.inner_text("#conn") == "Live"
        assert refusals["n"] == 3
        posts_before = len(http_posts)
        page.keyboard.press("Escape")
        draw_with_mouse(page, pen_digits[1])
        wait_for_prediction(page)
        assert len(http_posts) == posts_before
        assert recorder.sent_of("predict")
        assert edge.health()["pending"] == 1
    finally:
        context.close()


def test_page_reconnects_to_a_restarted_server_and_reads_the_drawing_again(
    playwright_browser, edge, edge_models, pen_digits
):
    context, page, recorder = open_page(playwright_browser, edge.url)
    again = None
    try:
        # Every text the connection badge shows, to see the countdown count down.
        page.evaluate(
            """() => { window.__conn = []; const el = document.getElementById('conn');
            new MutationObserver(() => window.__conn.push(el.textContent))
                .observe(el, {childList: true, characterData: true, subtree: true}); }"""
        )
        draw_with_mouse(page, pen_digits[3])
        wait_for_prediction(page)
        first_id = [m["id"] for m in recorder.received if m.get("type") == "prediction"][-1]
        # A restart (a power cut, an update) forgets the prediction ids it handed out.
        edge.stop()
        page.wait_for_selector("#conn[data-state=closed]")
        page.wait_for_timeout(6000)
        log = edge.log_path.with_suffix(".again.log")
        again = EdgeProcess(hwr_edge_command(), edge.data_dir, edge_models, log, port=edge.port)
        again.wait_healthy()
        page.wait_for_selector("#conn[data-state=open]", timeout=SLOW_MS)
        # Back, the page reads the drawing on screen again: a fresh id from the new process.
        page.wait_for_function(
            "id => { const r = document.getElementById('result').dataset;"
            " return r.state === 'shown' && r.seq === r.asked && hwrApp.prediction.id !== id; }",
            arg=first_id,
        )
        page.click("#keypad [data-label='3']")
        page.wait_for_selector("#correction[data-state=ok]")
        assert page.inner_text("#correction") == "Saved \u2713 3"
        (sent,) = recorder.sent_of("correct")
        assert sent["label"] == "3" and sent["id"] != first_id
        page.wait_for_selector("#pending[data-count='1']")
        texts = page.evaluate("window.__conn")
    finally:
        context.close()
        if again is not None:
            again.stop()
    assert [r["label"] for r in stored_rows(edge.data_dir / "custom_digits.h5")] == ["3"]
    # "Reconnecting in N s" counts down: some N is followed by N - 1 within one wait.
    counts = [int(t.split()[2]) for t in texts if t.startswith("Reconnecting in ")]
    assert any(b == a - 1 for a, b in zip(counts, counts[1:], strict=False)), texts


def test_trained_models_read_pen_digits_drawn_on_the_canvas(page_on_edge, pen_digits):
    if models_for_edge() != ROOT / "models_export":
        pytest.skip("no trained models in models_export/: the development models guess at random")
    page, _, _ = page_on_edge
    right = 0
    for digit, strokes in sorted(pen_digits.items()):
        page.keyboard.press("Escape")
        draw_with_mouse(page, strokes)
        page.wait_for_function(
            "() => { const r = document.getElementById('result').dataset;"
            " return r.state === 'shown' && r.seq === r.asked; }"
        )
        right += page.inner_text("#pred-label") == str(digit)
    assert right >= 7, f"only {right} of 10 pen digits read right"


SIZES = {
    "800x480": ({"width": 800, "height": 480}, 1),
    "1024x600": ({"width": 1024, "height": 600}, 1),
    "390x844": (PHONE, 3),
    "844x390": ({"width": 844, "height": 390}, 3),
    "1280x800": ({"width": 1280, "height": 800}, 1),
}
SHOTS = ROOT / "build" / "screenshots"
# Where every target and status is, and whether the page scrolls.
GEOMETRY = """() => {
    const box = e => { const r = e.getBoundingClientRect();
        return {id: e.id || e.dataset.label || e.className, left: r.left, top: r.top,
                right: r.right, bottom: r.bottom, width: r.width, height: r.height}; };
    const shown = e => e.getClientRects().length > 0 && !e.closest('dialog');
    const c = document.getElementById('canvas');
    return {
        targets: [...document.querySelectorAll('button')].filter(shown).map(box),
        statuses: ['conn', 'models', 'sync', 'pending', 'correction', 'keypad-title', 'result',
                   'keypad', 'watching', 'remote'].map(id => box(document.getElementById(id))),
        footerTop: document.querySelector('footer').getBoundingClientRect().top,
        // Statuses whose text is cut short (an ellipsis) although a pupil must read them.
        clipped: ['conn', 'pending', 'keypad-title', 'pred-hint', 'undo-save', 'models', 'sync',
                  'remote', 'correction', 'watching'].filter(id => {
            const e = document.getElementById(id);
            if (id === 'remote' && e.dataset.state === 'open') return false; // a URL, in its title
            return e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight + 1; }),
        canvas: box(c), store: [c.width, c.height], dpr: devicePixelRatio,
        touchAction: getComputedStyle(c).touchAction,
        scrollWidth: document.documentElement.scrollWidth,
        scrollHeight: document.documentElement.scrollHeight,
    };
}"""


@pytest.mark.parametrize("name", list(SIZES))
def test_every_target_and_status_fits_on_one_screen(
    playwright_browser, shared_edge, pen_digits, name
):
    viewport, scale = SIZES[name]
    SHOTS.mkdir(parents=True, exist_ok=True)
    context, page, _ = open_page(
        playwright_browser, shared_edge.url, viewport=viewport, touch=True, scale=scale
    )
    seen = {}
    try:
        for mode in ("digit", "char"):
            page.locator(f"#mode-{mode}").tap()
            page.keyboard.press("Escape")
            draw_with_touch(page, pen_digits[5] if mode == "digit" else LETTER_L)
            wait_for_prediction(page)
            # The longest texts each status can show, so that none is measured short.
            page.evaluate(
                """() => { hwrApp.showCorrection('error',
                    'Not saved: This device is full. Tell your teacher.');
                    document.getElementById('conn').textContent = 'Reconnecting in 5 s';
                    hwrApp.showWatching(2); hwrApp.showRemote(hwrApp.mode === 'digit'
                    ? {state: 'open', viewer_url: 'https://a-long-name.ngrok-free.app/viewer'}
                    : {state: 'failed', error: 'x'});
                    hwrApp.showSync({state: 'offline', last_sync: Date.now() / 1000 - 86400 * 3});
                    hwrApp.showPending(1234);
                    hwrApp.offerUndo({id: 'x', kind: 'correction', mode: hwrApp.mode,
                    label: 'W', strokes: []}); document.getElementById('undo-left')
                    .textContent = '(10)'; }"""
            )
            page.screenshot(path=str(SHOTS / f"canvas-{name}-{mode}.png"))
            seen[mode] = page.evaluate(GEOMETRY)
    finally:
        context.close()
    width, height = viewport["width"], viewport["height"]
    for mode, g in seen.items():
        assert g["scrollWidth"] <= width and g["scrollHeight"] <= height, (mode, "scrolls")
        small = [t for t in g["targets"] if min(t["width"], t["height"]) < 44]
        assert small == [], (mode, "targets under 44 px", small)
        outside = [
            b
            for b in g["targets"] + g["statuses"]
            if b["left"] < 0 or b["top"] < 0 or b["right"] > width or b["bottom"] > height
        ]
        assert outside == [], (mode, "not on screen", outside)
        assert g["clipped"] == [], (mode, "cut short", g["clipped"])
        # The panel's parts stay above the footer: nothing spills onto it.
        panel = [b for b in g["statuses"] if b["id"] in ("correction", "keypad", "result")]
        assert max(b["bottom"] for b in panel) <= g["footerTop"] + 0.5, (mode, panel)
        canvas = g["canvas"]
        assert abs(canvas["width"] - canvas["height"]) < 1, "the canvas is not square"
        assert canvas["width"] >= 280, (mode, "the canvas is too small to draw on")
        assert g["store"] == [round(canvas["width"] * scale), round(canvas["height"] * scale)]
        assert g["touchAction"] == "none"


def test_keyboard_users_reach_every_control_with_a_visible_focus(page_on_edge):
    page, _, _ = page_on_edge
    seen = []
    for _ in range(8):
        page.keyboard.press("Tab")
        seen.append(
            page.evaluate(
                """() => {
                const el = document.activeElement;
                const s = getComputedStyle(el);
                return [el.tagName, el.id || el.dataset.label, s.outlineStyle, parseFloat(s.outlineWidth)];
            }"""
            )
        )
    ids = [s[1] for s in seen]
    # The Right! button is disabled until there is a guess, so the keypad comes next.
    assert ids[:7] == ["mode-digit", "mode-char", "undo", "clear", "menu-open", "0", "1"]
    assert all(tag == "BUTTON" and style != "none" and width >= 2 for tag, _, style, width in seen)
    labels = page.eval_on_selector_all(
        "button", "els => els.map(e => (e.getAttribute('aria-label') || e.textContent).trim())"
    )
    assert all(labels)
    assert page.get_attribute("#pred-live", "aria-live") == "polite"
    page.focus("#mode-char")
    page.keyboard.press("Enter")
    assert page.get_attribute("#mode-char", "aria-pressed") == "true"
    assert page.eval_on_selector_all("#keypad .key", "els => els.length") == len(LETTER_CLASSES)
