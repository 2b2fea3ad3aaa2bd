"""The ngrok agent a process left running: recorded in a pid file, stopped by the next process.

A process that is SIGKILLed (a worker out of memory, a power cut of the service manager's
making) cannot stop its agent, and the agent keeps running, orphaned: it holds the account's
agent session (a free account has one, so the next tunnel would be refused) and its private
config file holds the auth token. :class:`hwrcore.tunnel.Tunnel` records its agent in
``pid_file`` (``{"pid", "config"}``) and, before starting an agent, stops the one a previous
process recorded there. The process is only stopped if it still runs with that config file
on its command line, so a pid the system has given to another process since is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_DIR_PREFIX = "hwr-ngrok-"  # the temporary directory holding an agent's config
AGENT_PID_FILE = "ngrok.pid"  # in a component's data directory


def record(pid_file: Path, pid: int, config_path: str) -> None:
    """Write ``pid_file`` (0600, replaced atomically) naming the agent ``pid``."""
    tmp = pid_file.with_name(f".{pid_file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "config": config_path}, f)
    os.replace(tmp, pid_file)


def forget(pid_file: Path, pid: int) -> None:
    """Remove ``pid_file`` if it still names ``pid`` (another process may have written it)."""
    try:
        if json.loads(pid_file.read_text()).get("pid") == pid:
            pid_file.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def runs_with(pid: int, config_path: str) -> bool:
    """Whether process ``pid`` runs (not a zombie) with ``config_path`` among its arguments."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(config_path) in args


def stop_leftover(pid_file: Path, wait: float = 3.0) -> int | None:
    """Stop the agent ``pid_file`` names, if it still runs; remove its config and the file.

    Returns the pid stopped, or None. An unreadable file is removed with a warning.
    """
    try:
        doc = json.loads(pid_file.read_text())
        pid, config = int(doc["pid"]), str(doc["config"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        log.warning("removed an unreadable ngrok pid file %s", pid_file)
        pid_file.unlink(missing_ok=True)
        return None
    stopped = None
    if pid > 1 and pid != os.getpid() and runs_with(pid, config):
        try:
            os.kill(pid, signal.SIGKILL)
            stopped = pid
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while stopped and runs_with(pid, config) and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopped:
            log.warning("stopped the ngrok agent a previous process left running (pid %d)", pid)
    folder = Path(config).parent
    if folder.name.startswith(CONFIG_DIR_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
    pid_file.unlink(missing_ok=True)
    return stopped


__all__ = ["AGENT_PID_FILE", "CONFIG_DIR_PREFIX", "forget", "record", "runs_with", "stop_leftover"]
