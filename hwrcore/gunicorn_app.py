"""The gunicorn application both servers run: the app is made in each worker, on a socket the
supervising process has already bound.

A worker that cannot make its app (a store another process holds, a database it cannot open)
writes why into a pipe and exits with gunicorn's boot-error status, which stops the master at
once instead of starting worker after worker; the master reads the reason and mutes gunicorn's
own lines about it, so the process prints one line on stderr. The "serving" lines are printed by
the first worker once its app is made: a process that prints them answers requests.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.errors import HaltServer

from .errors import HwrError

log = logging.getLogger("hwrcore.gunicorn_app")

WORKER_BOOT_ERROR = 3  # gunicorn's: the master stops instead of starting another worker
REASON_BYTES = 4000


class BootFailure(logging.Filter):
    """In the master: reads why a worker could not start, then mutes gunicorn's lines about it
    (the reason is printed once, by the command)."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.reason is None and record.getMessage().endswith(
            f"exited with code {WORKER_BOOT_ERROR}."
        ):
            os.set_blocking(self.fd, False)
            try:
                first = os.read(self.fd, 1 << 16).split(b"\0", 1)[0]  # one reason a worker
                self.reason = first.decode(errors="replace").strip() or None
            except OSError:
                pass
        return self.reason is None


class ServedApp(BaseApplication):
    """gunicorn on the inherited socket ``fd``; subclasses give ``settings`` and ``make_app``.

    ``ready_lines`` are printed (stdout, flushed) by the first worker once its app is made;
    after ``run`` ends, ``boot_failure.reason`` says why a worker could not start, if one could
    not.
    """

    def __init__(self, fd: int, ready_lines: tuple[str, ...] = ()):
        self.fd = fd
        self.ready_lines = ready_lines
        self.boot_read, self.boot_write = os.pipe()
        self.boot_failure = BootFailure(self.boot_read)
        super().__init__()

    def settings(self) -> dict[str, Any]:
        """gunicorn settings of this server (bind and the hooks below are added)."""
        raise NotImplementedError

    def make_app(self) -> Any:
        """In a worker: the WSGI app."""
        raise NotImplementedError

    def worker_ready(self, worker: Any) -> None:
        """In a worker, once its app is made (gunicorn's ``post_worker_init``)."""

    def load_config(self) -> None:
        settings = {
            **self.settings(),
            "bind": [f"fd://{self.fd}"],
            "post_worker_init": self._on_worker_ready,
            "on_starting": self._on_starting,
            "control_socket_disable": True,  # gunicorn >= 27 would open one in $HOME
        }
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def run(self) -> None:
        try:
            super().run()
        except HaltServer as exc:
            # A second worker failed to boot while the master was stopping for the first;
            # gunicorn raises that out of its halt. The others die with the master.
            sys.exit(exc.exit_status)

    def _on_starting(self, arbiter: Any) -> None:
        logging.getLogger("gunicorn.error").addFilter(self.boot_failure)

    def _on_worker_ready(self, worker: Any) -> None:
        self.worker_ready(worker)
        if worker.age == 1:  # the first worker: "serving" once the app is made, not before
            for line in self.ready_lines:
                print(line, flush=True)

    def load(self) -> Any:
        """In the worker: the app; if it cannot be made, tell the master why and end at once."""
        try:
            return self.make_app()
        except Exception as exc:
            reason = exc.message if isinstance(exc, HwrError) else f"{type(exc).__name__}: {exc}"
            log.debug("the worker could not start", exc_info=exc)
            os.write(self.boot_write, reason.encode()[:REASON_BYTES].replace(b"\0", b"") + b"\0")
            os._exit(WORKER_BOOT_ERROR)


__all__ = ["BootFailure", "ServedApp", "WORKER_BOOT_ERROR"]
