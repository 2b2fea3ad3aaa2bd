# ruff: noqa: F811 - the fixtures of tests/test_browser.py are imported by name
"""The canvas of a synced device, in Chromium: the school server's state and a new model shown."""

from __future__ import annotations

import pytest

from tests import versions
from tests.sync_harness import (
    SyncedEdge,
    SyncServer,
    last_line,
    new_model_version,
    run_cli,
    wait_for,
)
from tests.test_browser import (  # noqa: F401 - a fixture
    open_page,
    playwright_browser,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_canvas_says_when_a_new_model_arrives_and_whether_the_server_takes_the_device(
    playwright_browser, tmp_path
):
    data = tmp_path / "server"
    run_cli("init", data_dir=data)
    token = last_line(run_cli("add-device", "room-1", data_dir=data))
    key = last_line(run_cli("public-key", data_dir=data))
    server = SyncServer(data)
    edge = SyncedEdge(tmp_path / "edge", server.url, token, key)
    context = None
    try:
        context, page, _ = open_page(playwright_browser, edge.url)
        page.wait_for_selector("#sync[data-state='online']")
        models = page.locator("#models")
        assert models.get_attribute("data-state") == "ok"
        assert "New model" not in models.text_content()
        assert versions.digits() in models.text_content()

        new = versions.digits(1)
        run_cli("publish", str(new_model_version(tmp_path, new)), data_dir=data)
        wait_for(lambda: edge.health()["models"]["digit"]["version"] == new, 30, "the new model")
        page.wait_for_selector("#models[data-state='new']")
        assert "New model" in models.text_content() and new in models.text_content()

        run_cli("revoke-device", "room-1", data_dir=data)  # the server refuses it from now on
        wait_for(lambda: edge.health()["sync"]["state"] == "refused", 30, "the refusal")
        page.wait_for_selector("#sync[data-state='refused']", timeout=30_000)
        assert "refuses this device" in page.text_content("#sync")
    finally:
        if context is not None:
            context.close()
        edge.stop()
        server.stop()
