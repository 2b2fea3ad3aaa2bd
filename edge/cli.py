"""``hwr-edge``: serve the edge app under gunicorn (one worker: one writer per store).

    hwr-edge [--host H] [--port P] [--data-dir D] [--models-dir M] [--config FILE.toml] [--tunnel]

Settings come from defaults, then ``--config``, then HWR_EDGE_* variables, then these flags.
The listening socket is bound here, before the server starts, so a port in use is reported
at once (``--port 0`` picks a free port; the URL printed names it). Missing or damaged models,
a port in use or a bad setting print one line on stderr and exit with status 2; so does a
worker that cannot start (a data directory another hwr-edge holds, a store it cannot read or
write): it tells the master why through a pipe and the master stops at once, without gunicorn's
restart loop.

``--tunnel`` opens an ngrok tunnel to the viewer once the worker runs (edge/remote.py); without
a viewer token or an ngrok auth token it is refused here, one line and status 2.

The worker is :class:`hwrcore.worker.GuardedWorker`: gunicorn's threads, with requests read
whole in its event loop before a thread runs them, so slow and idle clients hold no thread.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hwrcore.errors import HwrError
from hwrcore.gunicorn_app import ServedApp
from hwrcore.serving import bind, die_with_parent, keep_private, url_of

from .config import EdgeConfig, load_config
from .models import check_models

log = logging.getLogger("edge")

EXIT_USAGE = 2
PR_SET_PDEATHSIG = 1
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Buffers from this size up (a decoded PNG, a request body) are mapped and given back to the
# system when freed, instead of staying in malloc's heap after a burst of large requests.
MALLOC_RETURN_BYTES = 128 << 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hwr-edge", description="Serve the classroom canvas and API.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, help="where the corrections are kept")
    p.add_argument("--models-dir", type=Path, help="folder with digits.json and characters.json")
    p.add_argument("--config", type=Path, help="a TOML file of settings")
    p.add_argument(
        "--tunnel",
        action="store_true",
        default=None,
        help="open an ngrok tunnel to the viewer (needs viewer_token and NGROK_AUTHTOKEN)",
    )
    return p.parse_args(argv)


def _die_with_parent(server: Any, worker: Any) -> None:
    """In the worker: die with the master, as a power cut would, instead of living on alone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # glibc gives each thread its own malloc arena; with dozens of socket threads that
        # multiplies resident memory for nothing on a 1 GB device.
        libc.mallopt(M_ARENA_MAX, 2)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_RETURN_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_RETURN_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator's defaults
    die_with_parent(worker.ppid)


def _on_worker_ready(worker: Any) -> None:
    """Stop answering new messages as soon as a graceful stop begins, before threads are drained."""
    app = worker.wsgi
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        app.extensions["hwr"].closing.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    log.info("ready: worker %d answers", os.getpid())


def _on_worker_exit(server: Any, worker: Any) -> None:
    """Close the stores when the worker leaves."""
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        from .app import close_app

        close_app(app)
        log.info("stores closed")


class EdgeServer(ServedApp):
    """gunicorn running ``create_app(config)`` in one worker."""

    def __init__(self, config: EdgeConfig, fd: int, ready_lines: tuple[str, ...] = ()):
        self.edge_config = config
        super().__init__(fd, ready_lines)

    def settings(self) -> dict[str, Any]:
        c = self.edge_config
        return {
            "workers": 1,  # one process writes the stores
            "worker_class": "hwrcore.worker.GuardedWorker",
            "threads": c.threads,  # an open WebSocket holds a thread
            "graceful_timeout": 5,
            "timeout": 60,
            "keepalive": 5,
            "loglevel": c.log_level,
            "errorlog": "-",
            "accesslog": None,
            "proc_name": "hwr-edge",
            "post_fork": _die_with_parent,
            "worker_exit": _on_worker_exit,
        }

    def worker_ready(self, worker: Any) -> None:
        _on_worker_ready(worker)

    def make_app(self) -> Any:
        from .app import create_app

        return create_app(self.edge_config)


class StartError(HwrError):
    """The process cannot start: a port in use, a data directory it cannot write."""

    code = "cannot_start"


def serve(config: EdgeConfig) -> int:
    """Check models, bind, print the URL and serve until stopped; returns gunicorn's exit status."""
    check_models(config.models_dir)
    if config.sync_enabled:
        config.device_token()  # ConfigError here, not in the worker, when the token is missing
    if config.tunnel:
        from .remote import check_tunnel

        check_tunnel(config)  # TunnelRefused: no viewer token or no ngrok token, exit 2
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"cannot create the data directory {config.data_dir}: {exc}") from None
    if not os.access(config.data_dir, os.W_OK):
        raise StartError(f"the data directory {config.data_dir} is not writable")
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        raise StartError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    lines = [f"hwr-edge: serving {url_of(sock)} (data in {config.data_dir})"]
    if config.tunnel:
        # The worker opens the tunnel to the port actually bound (--port 0 included).
        config = dataclasses.replace(config, port=sock.getsockname()[1])
        lines.append("hwr-edge: opening an ngrok tunnel to the viewer in the background")
    # The app is imported in the worker only: the master stays small (it only supervises).
    # The worker prints the lines once it answers: a store or model that fails to open is
    # then the one line on stderr, with no "serving" before it.
    server = EdgeServer(config, sock.detach(), tuple(lines))
    master = os.getpid()
    try:
        server.run()
    except SystemExit as exc:
        if os.getpid() != master:
            raise  # in a forked worker: gunicorn's exit status is the master's to read
        if server.boot_failure.reason is not None:
            raise StartError(server.boot_failure.reason) from None
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve, and map every start-up failure to one line on stderr and status 2."""
    args = parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "models_dir": args.models_dir,
        "tunnel": args.tunnel,
    }
    try:
        config = load_config(args.config, overrides=flags)
    except HwrError as exc:
        print(f"hwr-edge: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=config.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    keep_private()
    try:
        status = serve(config)
    except HwrError as exc:
        print(f"hwr-edge: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if status not in (0, None):
        print(
            f"hwr-edge: the server stopped with status {status} (see the log above)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
