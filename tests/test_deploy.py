"""A device that boots into the canvas: the wheel finds its assets, the installer and units hold up."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from tests.sync_harness import Process

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("hwr-edge.service", "hwr-kiosk.service")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout (no build isolation: nothing downloaded)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (found,) = out.glob("classroom_hwr-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A virtual environment with the wheel installed (not editable); its dependencies are this one's."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["--no-deps", "-q", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    # The dependencies (numpy, flask, ai-edge-litert...) from this environment, without its
    # editable install of the project: a path line in a .pth adds a folder, not its .pth files.
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_an_installed_wheel_finds_its_models_and_web_pages_outside_the_checkout(
    installed, tmp_path
):
    probe = (
        "import json, edge.config as c, edge;"
        "print(json.dumps([str(c.default_models_dir()), str(c.default_web_dir()), edge.__file__]))"
    )
    out = subprocess.run(
        [str(installed / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout
    models, web, module = (Path(p) for p in json.loads(out))
    assert installed in module.parents, f"edge imported from {module}, not the wheel"
    assert installed in models.parents and (models / "digits.json").is_file()
    assert (models / "characters.tflite").is_file()
    assert installed in web.parents and (web / "index.html").is_file()
    assert (web / "static" / "app.js").is_file()


def test_an_installed_wheel_serves_the_canvas_with_the_shipped_models(installed, tmp_path):
    data = tmp_path / "data"
    edge = Process(
        [str(installed / "bin" / "hwr-edge"), "--port", "0", "--data-dir", str(data)],
        tmp_path / "edge.log",
        "/healthz",
        env={"HWR_EDGE_LOG_LEVEL": "warning"},
    )
    try:
        page = requests.get(edge.url + "/", timeout=10)
        script = requests.get(edge.url + "/static/app.js", timeout=10)
        health = requests.get(edge.url + "/healthz", timeout=10).json()
    finally:
        edge.stop()
    assert page.status_code == 200 and "<canvas" in page.text
    assert script.status_code == 200 and len(script.content) > 1000
    shipped = json.loads((ROOT / "models_export" / "digits.json").read_text())
    assert health["models"]["digit"]["version"] == shipped["version"]


def _tree(root: Path) -> dict[str, str]:
    """Every file outside the virtual environment, with a hash of its content and its mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("opt/hwr-edge/venv", "usr/lib/systemd/system")) or p.is_dir():
            continue
        body = os.readlink(p) if p.is_symlink() else p.read_bytes()
        digest = hashlib.sha256(body.encode() if isinstance(body, str) else body).hexdigest()
        out[rel] = f"{digest[:16]} {oct(p.lstat().st_mode)}"
    return out


def _install(root: Path, wheel: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(DEPLOY / "install.sh"), "--root", str(root), "--wheel", str(wheel)]
        + ["--pip-option", "--no-deps"],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates users: it runs as root")
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="needs systemd-sysusers")
def test_the_installer_is_idempotent_in_a_scratch_root_and_keeps_settings(wheel, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    first = _install(root, wheel)
    assert first.returncode == 0, first.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert "hwr-edge:" in passwd and "hwr-kiosk:" in passwd
    assert (root / "opt/hwr-edge/venv/bin/hwr-edge").is_file()
    wants = root / "etc/systemd/system/multi-user.target.wants/hwr-edge.service"
    assert wants.is_symlink() and (root / "etc/systemd/system/graphical.target.wants").is_dir()
    unit = (root / "etc/systemd/system/hwr-edge.service").read_text()
    assert "ExecStart=/opt/hwr-edge/venv/bin/hwr-edge " in unit and "@PREFIX@" not in unit
    env = root / "etc/hwr-edge/environment"
    assert oct(env.stat().st_mode & 0o777) == "0o640"  # it will hold the device token

    settings = root / "etc/hwr-edge/edge.toml"
    settings.write_text(settings.read_text() + 'sync_url = "http://school:8100"\n')
    before = _tree(root)
    second = _install(root, wheel)
    assert second.returncode == 0, second.stderr
    assert _tree(root) == before  # nothing changed, a teacher's setting kept
    assert 'sync_url = "http://school:8100"' in settings.read_text()
    assert passwd == (root / "etc" / "passwd").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates users: it runs as root")
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_installed_units_pass_systemd_analyze_verify(wheel, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert _install(root, wheel).returncode == 0
    # verify --root resolves the units' dependencies (multi-user.target...) inside the root.
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["systemd-analyze", "verify", "--man=no", f"--root={root}"]
            + [f"/etc/systemd/system/{u}" for u in UNITS],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = verify()
    assert ok.returncode == 0 and ok.stderr.strip() == "", ok.stderr
    # The check is real: a unit whose program is missing fails it.
    (root / "opt/hwr-edge/bin/hwr-kiosk").unlink()
    assert verify().returncode != 0
