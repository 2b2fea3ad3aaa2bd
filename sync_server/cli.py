"""``hwr-sync-server``: serve the school's sync server, and manage its devices and models.

    hwr-sync-server init                             # a new school; its public key last
    hwr-sync-server serve [--host H] [--port P] [--data-dir D] [--config FILE.toml] [--tunnel]
    hwr-sync-server add-device NAME [--group G]      # the token alone on the last line
    hwr-sync-server revoke-device NAME
    hwr-sync-server new-token NAME                   # a lost token replaced; the new one last
    hwr-sync-server devices
    hwr-sync-server public-key                       # the public key alone on the last line
    hwr-sync-server publish MODEL.json
    hwr-sync-server rollback NAME VERSION
    hwr-sync-server models
    hwr-sync-server worker                           # the Huey consumer: scoring and retraining
    hwr-sync-server retrain digits|characters [--wait]
    hwr-sync-server rollout NAME VERSION [--group G] # no group: every device
    hwr-sync-server jobs

Every subcommand takes ``--data-dir`` and ``--config``; settings come from defaults, then the
TOML file, then HWR_SYNC_* variables, then flags. The commands other than ``serve`` write the
database directly, so they work with the server running or not (a running server tells its
devices of a publish within a second). Only ``init`` and ``serve`` make a new school in an empty
data directory; the others refuse one, so a command run without the server's ``--data-dir``
cannot add a device to a school nobody serves. A domain error prints one line on stderr,
status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hwrcore import release as rel
from hwrcore.errors import HwrError
from hwrcore.gunicorn_app import ServedApp
from hwrcore.serving import bind, die_with_parent, keep_private, url_of

from .config import SyncConfig, load_config
from .state import StartError, hold_data_dir, make_private, open_state

log = logging.getLogger("sync_server")

EXIT_USAGE = 2
PROG = "hwr-sync-server"
PR_SET_PDEATHSIG = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="where the database, key and models live")
    common.add_argument("--config", type=Path, help="a TOML file of settings")
    p = argparse.ArgumentParser(prog=PROG, description="The school's sync server.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "init", parents=[common], help="make a new school's data directory, print its public key"
    )
    s = sub.add_parser("serve", parents=[common], help="serve the device API")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8100; 0 picks a free one)")
    s.add_argument(
        "--tunnel",
        action="store_true",
        default=None,
        help="open an ngrok tunnel to this server (needs the admin token and NGROK_AUTHTOKEN)",
    )
    a = sub.add_parser("add-device", parents=[common], help="register a device, print its token")
    a.add_argument("name")
    a.add_argument("--group", help="a group (a class or room) for the device")
    r = sub.add_parser("revoke-device", parents=[common], help="revoke a device's token")
    r.add_argument("name")
    nt = sub.add_parser(
        "new-token", parents=[common], help="give a device a new token (the old one stops working)"
    )
    nt.add_argument("name")
    sub.add_parser("devices", parents=[common], help="list the devices")
    sub.add_parser("public-key", parents=[common], help="print the public key devices pin")
    pub = sub.add_parser("publish", parents=[common], help="publish a model (its manifest)")
    pub.add_argument("manifest", type=Path)
    rb = sub.add_parser("rollback", parents=[common], help="release an older version again")
    rb.add_argument("name")
    rb.add_argument("version")
    sub.add_parser("models", parents=[common], help="list the stored model versions")
    sub.add_parser("worker", parents=[common], help="run the job worker (scoring, retraining)")
    rt = sub.add_parser("retrain", parents=[common], help="queue a retrain of a model")
    rt.add_argument("name", help="the model: digits or characters")
    rt.add_argument("--wait", action="store_true", help="follow the job until it ends")
    ro = sub.add_parser("rollout", parents=[common], help="release a stored version to a group")
    ro.add_argument("name")
    ro.add_argument("version")
    ro.add_argument("--group", help="the device group (default: every device)")
    sub.add_parser("jobs", parents=[common], help="list the retraining jobs")
    return p.parse_args(argv)


class SyncServer(ServedApp):
    """gunicorn running ``create_app(config)`` in ``workers`` processes."""

    def __init__(self, config: SyncConfig, fd: int, ready_lines: tuple[str, ...] = ()):
        self.sync_config = config
        super().__init__(fd, ready_lines)

    def settings(self) -> dict[str, Any]:
        c = self.sync_config
        return {
            "workers": c.workers,
            "worker_class": "hwrcore.worker.GuardedWorker",  # slow clients hold no thread
            "threads": c.threads,  # an open notify socket holds a thread
            "graceful_timeout": 5,
            "timeout": 60,
            "keepalive": 5,
            # X-Forwarded-* are believed only through ProxyFix, as proxy_hops says (auth.py);
            # gunicorn would otherwise believe X-Forwarded-Proto from any local client
            "forwarded_allow_ips": "",
            "loglevel": c.log_level,
            "errorlog": "-",
            "accesslog": None,
            "proc_name": PROG,
            "post_fork": _die_with_parent,
            "worker_exit": _on_worker_exit,
        }

    def make_app(self) -> Any:
        from .app import create_app

        return create_app(self.sync_config)


def _die_with_parent(server: Any, worker: Any) -> None:
    """In a worker: die with the master (SIGKILL included) instead of living on alone."""
    die_with_parent(worker.ppid)
    from .remote import forget_inherited_agent

    forget_inherited_agent()  # the master's ngrok agent is the master's to stop


def _on_worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        from .app import close_app

        close_app(app)


def start_worker(config: SyncConfig, config_file: Path | None) -> subprocess.Popen:
    """``hwr-sync-server worker`` beside the server, dying with it."""
    cmd = [sys.executable, "-m", "sync_server", "worker", "--data-dir", str(config.data_dir)]
    if config_file is not None:
        cmd += ["--config", str(config_file)]

    def die_with_parent() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass

    return subprocess.Popen(cmd, preexec_fn=die_with_parent, stdout=subprocess.DEVNULL)


def stop_worker(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the worker (a job it was running is marked failed at its next start)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class WorkerSupervisor:
    """Keeps one ``hwr-sync-server worker`` running beside the server (restarted if it dies)."""

    RESTART_S = 1.0

    def __init__(self, config: SyncConfig, config_file: Path | None):
        self.config = config
        self.config_file = config_file
        self.pid = os.getpid()  # the server's master: only it supervises
        self._stop = threading.Event()
        self.proc = start_worker(config, config_file)
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.RESTART_S):
            if os.getpid() != self.pid:
                return
            if self.proc.poll() is not None and not self._stop.is_set():
                log.warning("the job worker exited (%s); starting another", self.proc.returncode)
                self.proc = start_worker(self.config, self.config_file)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        stop_worker(self.proc)


def serve(config: SyncConfig, config_file: Path | None = None) -> int:
    """Migrate, make the key, import the shipped models, bind, print the URL, serve until stopped."""
    if config.tunnel:
        from .remote import check_tunnel

        check_tunnel(config)  # TunnelRefused: no admin token or no ngrok token, exit 2
    # Start-up failures are reported here, before binding (the database, the key, the queue),
    # each as the one line on stderr: the settings are logged once they have passed.
    st = open_state(config)
    if not st.admin_token:
        log.warning(
            "no admin token is set: the dashboard and the admin API refuse everyone; set "
            "HWR_SYNC_ADMIN_TOKEN or admin_token_file (make one with: openssl rand -hex 16)"
        )
    st.close()
    hold_data_dir(config.data_dir)  # one server per school's folder, held until this one ends
    log.info("effective config: %s", config.to_dict())
    mended = make_private(config.data_dir)
    if mended:
        log.warning(
            "%s was readable by other users; now its user's alone (was: %s)",
            config.data_dir,
            ", ".join(mended),
        )
    from .jobs import JobQueue

    JobQueue(config).close()
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        raise StartError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None
    # Printed by the first worker once its app is made: a worker that cannot start is then the
    # one line on stderr, with no "serving" before it.
    lines = [f"{PROG}: serving {url_of(sock)} (data in {config.data_dir})"]
    from .remote import no_tunnel, open_tunnel

    tunnel, master = None, os.getpid()
    if config.tunnel:  # one agent, in this process, whatever the number of workers
        tunnel = open_tunnel(config, sock.getsockname()[1])
        lines.append(f"{PROG}: opening an ngrok tunnel in the background")
    else:
        no_tunnel(config)
    server = SyncServer(config, sock.detach(), tuple(lines))
    worker = WorkerSupervisor(config, config_file) if config.start_worker else None
    try:
        server.run()
    except SystemExit as exc:
        if os.getpid() != master:
            raise  # in a forked worker: gunicorn's exit status is the master's to read
        if server.boot_failure.reason is not None:
            raise StartError(server.boot_failure.reason) from None
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        if worker is not None and os.getpid() == worker.pid:  # gunicorn's workers unwind here too
            worker.stop()
        if tunnel is not None and os.getpid() == master:  # a worker unwinds through here too
            tunnel.close()  # the ngrok agent with it
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def run_command(args: argparse.Namespace, config: SyncConfig) -> int:
    """Everything but ``serve``: open the state, act, print."""
    from .devices import add_device, list_devices, new_token, revoke_device

    if args.command == "worker":
        from .jobs import run_worker

        return run_worker(config)
    from .keys import key_path

    made = args.command == "init" and not key_path(config.data_dir).exists()
    st = open_state(config, create=args.command == "init")
    try:
        if args.command == "init":
            what = "a new school" if made else "the school already"
            print(f"{what} in {config.data_dir}; its devices pin this public key:")
            print(rel.public_key_text(st.key))
        elif args.command == "add-device":
            token = add_device(st.engine, args.name, args.group)
            print(f"device {args.name!r} added; its token, shown this once:")
            print(token)
        elif args.command == "new-token":
            token = new_token(st.engine, args.name)
            print(
                f"device {args.name!r} has a new token (the old one is refused), shown this once:"
            )
            print(token)
        elif args.command == "revoke-device":
            revoke_device(st.engine, args.name)
            print(f"device {args.name!r} revoked")
        elif args.command == "devices":
            for d in list_devices(st.engine):
                served = json.loads(d["hb_models"]) if d["hb_models"] else {}
                versions = ",".join(f"{m}={v['version']}" for m, v in sorted(served.items()))
                state = "revoked" if d["revoked"] else "active"
                print(
                    f"{d['name']}\t{d['group'] or '-'}\t{state}\tlast seen {_when(d['last_seen'])}"
                    f"\tpending {d['hb_pending'] if d['hb_pending'] is not None else '-'}"
                    f"\t{versions or '-'}"
                )
        elif args.command == "public-key":
            print(f"key id {rel.key_id(st.key)}; pin this in each device's sync_public_key:")
            print(rel.public_key_text(st.key))
        elif args.command == "publish":
            c = st.registry.publish(args.manifest, by=_who())
            print(f"{c.name} {c.version} is the current release (sequence {c.sequence})")
        elif args.command == "rollback":
            c = st.registry.rollback(args.name, args.version, by=_who())
            print(f"{c.name} {c.version} is the current release again (sequence {c.sequence})")
        elif args.command == "rollout":
            c = st.registry.rollout(args.name, args.version, args.group, by=_who())
            who = f"group {args.group!r}" if args.group else "every device"
            print(f"{c.name} {c.version} is the current release for {who} (sequence {c.sequence})")
        elif args.command == "retrain":
            return _retrain(st, config, args)
        elif args.command == "jobs":
            from .jobs import list_jobs

            for j in list_jobs(st.engine):
                print(
                    f"{j['id']}\t{j['name']}\t{j['status']}\t{j['stage'] or '-'}\t"
                    f"{j['percent']:.0f}%\t{j['version'] or '-'}\t{_when(j['requested'])}\t"
                    f"{j['requested_by']}\t{j['reason'] or ''}"
                )
        elif args.command == "models":
            for m in st.registry.models():
                mark = "*" if m["current"] else " "
                print(
                    f"{mark} {m['name']}\t{m['version']}\t{m['mode']}\t{m['sha256'][:16]}"
                    f"\t{m['length']}\t{_when(m['created'])}\t{m['published_by']}"
                )
    finally:
        st.close()
    return 0


def _retrain(st: Any, config: SyncConfig, args: argparse.Namespace) -> int:
    """Queue (or join) a retrain; with --wait follow it: 0 published, 1 refused or failed."""
    from .jobs import JobQueue, get_job, request_retrain

    st.jobs = JobQueue(config)
    job = request_retrain(st, args.name, by=_who(), trigger="cli")
    verb = "joined the" if job["joined"] else "queued"
    print(f"{verb} job {job['id']}: retrain {job['name']} ({job['status']})", flush=True)
    if not args.wait:
        return 0
    seen = None
    while True:
        job = get_job(st.engine, job["id"]) or job
        now = (job["status"], job["stage"], job["epoch"], int(job["percent"] or 0) // 10)
        if now != seen:
            epoch = f" epoch {job['epoch']}/{job['epochs']}" if job["stage"] == "training" else ""
            print(f"job {job['id']}: {job['status']} {job['stage']}{epoch} {job['percent']:.0f}%")
            seen = now
        if job["status"] in ("published", "refused", "failed"):
            break
        time.sleep(1.0)
    if job["status"] == "published":
        print(f"{job['name']} {job['version']} is published")
        return 0
    print(f"job {job['id']} {job['status']}: {job['reason']}")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and map every domain failure to one line on stderr and status 2."""
    args = parse_args(argv)
    flags: dict[str, Any] = {"data_dir": args.data_dir}
    if args.command == "serve":
        flags.update(host=args.host, port=args.port, tunnel=args.tunnel)
    try:
        config = load_config(args.config, overrides=flags)
    except HwrError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=config.log_level.upper() if args.command in ("serve", "worker") else "WARNING",
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in ("init", "serve", "worker"):
        keep_private()  # the other commands may be run by an admin for the server's user
    try:
        if args.command == "serve":
            status = serve(config, args.config)
        else:
            status = run_command(args, config)
            sys.stdout.flush()  # a closed pipe raises here, not at exit
            return status
    except HwrError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # ``hwr-sync-server devices | head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    if status not in (0, None):
        print(
            f"{PROG}: the server stopped with status {status} (see the log above)", file=sys.stderr
        )
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
