# ruff: noqa: F811 - the fixtures of tests/test_browser.py are imported by name
"""A device whose storage fills up: a real small filesystem (tmpfs), the edge app on it.

A correction that cannot be written for want of space is answered ``disk_full`` (507), the
health says so (status "degraded", ``storage.full``), nothing acknowledged is lost, and once
space is freed the next correction is stored and the warning goes.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.app import close_app, create_app
from edge.config import EdgeConfig
from tests.browser_helpers import draw_with_mouse
from tests.models import require_models
from tests.test_browser import (  # noqa: F401 - fixtures
    edge_models,
    open_page,
    pen_digits,
    playwright_browser,
    start_edge,
    wait_for_prediction,
)

SEVEN = [[[60.0, 50.0], [220.0, 50.0], [130.0, 240.0]]]


@pytest.fixture
def tiny(tmp_path: Path):
    """A 4 MiB tmpfs (needs root and mount rights; skipped where they are missing)."""
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem refuses another byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _correct(client, label: str = "7"):
    return client.post("/api/correct", json={"mode": "digit", "strokes": SEVEN, "label": label})


def test_a_full_disk_is_named_to_the_pupil_and_in_health_and_loses_nothing(tiny, tmp_path):
    config = EdgeConfig(data_dir=tiny / "data", models_dir=require_models())
    app = create_app(config)
    try:
        client = app.test_client()
        assert _correct(client).status_code == 200
        assert client.get("/healthz").json["storage"]["full"] is False
        filler = _fill(tiny)
        stored = 1
        for _ in range(200):  # a file's last page may still take a few small records
            refused = _correct(client, "3")
            if refused.status_code != 200:
                break
            stored += 1
        assert refused.status_code == 507, refused.json
        assert refused.json["error"]["code"] == "disk_full"
        assert "storage is full" in refused.json["error"]["message"]
        health = client.get("/healthz").json
        assert health["status"] == "degraded" and health["storage"]["full"] is True
        assert any("corrections cannot be saved" in r for r in health["reasons"]), health

        os.remove(filler)  # a teacher frees space
        assert _correct(client, "1").status_code == 200
        stored += 1
        health = client.get("/healthz").json
        assert health["storage"]["full"] is False
        assert not any("cannot be saved" in r for r in health["reasons"])
        assert any("little storage left" in r for r in health["reasons"])  # 4 MiB is little
    finally:
        close_app(app)
    copy = tmp_path / "copy"
    shutil.copytree(tiny / "data", copy)
    again = create_app(EdgeConfig(data_dir=copy, models_dir=require_models()))
    try:
        stats = again.test_client().get("/healthz").json["corrections"]["digit"]
        assert stats["count"] == stored, stats  # every one acknowledged, no refused one
    finally:
        close_app(again)


@pytest.mark.browser
def test_the_pupil_is_told_to_fetch_a_teacher_and_the_footer_says_why(
    tiny, playwright_browser, edge_models, pen_digits
):
    server = start_edge(tiny, edge_models)
    try:
        context, page, _ = open_page(playwright_browser, server.url)
        try:
            filler = _fill(tiny)
            for _ in range(50):  # until a correction finds no room
                draw_with_mouse(page, pen_digits[7])
                wait_for_prediction(page)
                page.click("#keypad [data-label='3']")
                page.wait_for_selector("#correction:not([data-state=busy])")
                if page.get_attribute("#correction", "data-state") == "error":
                    break
                page.keyboard.press("Escape")
            assert page.inner_text("#correction").startswith(
                "Not saved: This device is full. Tell your teacher."
            )
            page.wait_for_selector("#pending[data-state=disk-full]")
            assert page.inner_text("#pending") == "Storage full: tell a teacher"
            os.remove(filler)
            page.click("#keypad [data-label='3']")  # the same drawing again, now with room
            page.wait_for_selector("#correction[data-state=ok]")
            page.wait_for_function("!document.getElementById('pending').dataset.state")
            assert page.inner_text("#pending").startswith("Waiting to sync: ")
        finally:
            context.close()
    finally:
        server.stop()
