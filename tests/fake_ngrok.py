"""A fake ``ngrok`` agent v3 that pyngrok 9.x accepts: same argv, logfmt lines and agent API.

pyngrok starts ``ngrok start --none --log stdout [--config P] [--authtoken T] [--region R]``,
reads stdout until it has seen ``msg="starting web service" addr=...``, ``msg="client session
established"`` and ``msg="tunnel session started"`` and ``GET /api/endpoints`` answers 200, then
creates endpoints with ``POST /api/endpoints`` and removes them with ``DELETE <uri>``.

Behaviour is chosen by environment variables (the agent inherits its parent's environment):
  FAKE_NGROK_MODE    ok (default) | offline | hang | slow | bad-token | reject
  FAKE_NGROK_DELAY   seconds before the session lines in ``slow`` mode (default 1)
  FAKE_NGROK_RECORD  a file that gets one JSON line per start and per API request
  FAKE_NGROK_DOMAIN  the domain of the public URLs it makes (default ngrok-free.app)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "3.22.1"
# The public URLs' domain (a browser test needs one that is not on the HSTS preload list).
DOMAIN = os.environ.get("FAKE_NGROK_DOMAIN", "ngrok-free.app")
# Fields ngrok's agent accepts in a v3 endpoint definition; anything else is a 400 as in ngrok.
ENDPOINT_FIELDS = {
    "name",
    "description",
    "metadata",
    "url",
    "upstream",
    "traffic_policy",
    "pooling_enabled",
    "bindings",
}


def record(event: dict) -> None:
    """Append one JSON line to the record file, if one is named."""
    path = os.environ.get("FAKE_NGROK_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def log(lvl: str, msg: str, **fields: str) -> None:
    """Write one logfmt line the way ngrok does with ``--log stdout``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime())
    extra = " ".join(f"{k}={quote(v)}" for k, v in fields.items())
    sys.stdout.write(f't={stamp} lvl={lvl} msg="{msg}" {extra}'.rstrip() + "\n")
    sys.stdout.flush()


def quote(value: str) -> str:
    """A logfmt value: bare when it can be, else double-quoted."""
    return json.dumps(value) if any(c in value for c in ' "=') else value


def option(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``args`` (``--flag value`` or ``--flag=value``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def read_config(path: str | None) -> dict:
    """The agent config file as a dict (empty when none is named)."""
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


class Agent:
    """The endpoints this fake agent holds."""

    def __init__(self) -> None:
        self.endpoints: dict[str, dict] = {}
        self.lock = threading.Lock()


def make_handler(agent: Agent, mode: str) -> type[BaseHTTPRequestHandler]:
    """The local agent API: /api/endpoints (and /api/tunnels) create, list, get, delete."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep stderr quiet
            pass

        def reply(self, status: int, body: dict | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def collection(self) -> str | None:
            for name in ("endpoints", "tunnels"):
                if self.path.rstrip("/") == f"/api/{name}" or self.path.startswith(f"/api/{name}/"):
                    return name
            return None

        def do_GET(self) -> None:
            kind = self.collection()
            if kind is None:
                self.reply(200 if self.path.rstrip("/") == "/api" else 404, {})
                return
            name = self.path.rstrip("/").removeprefix(f"/api/{kind}").strip("/")
            with agent.lock:
                if not name:
                    self.reply(200, {kind: list(agent.endpoints.values()), "uri": f"/api/{kind}"})
                elif name in agent.endpoints:
                    self.reply(200, agent.endpoints[name])
                else:
                    self.reply(404, {"error_code": 100, "status_code": 404, "msg": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self.reply(400, {"error_code": 100, "status_code": 400, "msg": "bad json"})
                return
            record({"event": "request", "method": "POST", "path": self.path, "body": body})
            unknown = sorted(set(body) - ENDPOINT_FIELDS)
            if self.collection() != "endpoints" or unknown or mode == "reject":
                detail = f"unknown fields {unknown}" if unknown else "endpoint refused"
                self.reply(
                    400,
                    {
                        "error_code": 102,
                        "status_code": 400,
                        "msg": "invalid endpoint configuration",
                        "details": {"err": detail},
                    },
                )
                return
            name = body.get("name") or f"ep-{secrets.token_hex(4)}"
            data = {
                "name": name,
                "uri": f"/api/endpoints/{name}",
                "url": f"https://{secrets.token_hex(6)}.{DOMAIN}",
                "upstream": body.get("upstream", {}),
                "traffic_policy": body.get("traffic_policy"),
                "metrics": {},
            }
            with agent.lock:
                agent.endpoints[name] = data
            self.reply(201, data)

        def do_DELETE(self) -> None:
            record({"event": "request", "method": "DELETE", "path": self.path})
            name = self.path.rstrip("/").rsplit("/", 1)[-1]
            with agent.lock:
                found = agent.endpoints.pop(name, None)
            if found is None:
                self.reply(404, {"error_code": 100, "status_code": 404, "msg": "not found"})
            else:
                self.reply(204)

    return Handler


def exit_when_orphaned() -> None:
    """Stop when the process that started us is gone, so a crashed test leaves nothing behind
    (unless FAKE_NGROK_OUTLIVE_PARENT is set: the real agent keeps running, orphaned)."""
    if os.environ.get("FAKE_NGROK_OUTLIVE_PARENT"):
        return
    parent = os.getppid()
    while True:
        time.sleep(0.3)
        if os.getppid() != parent:
            os._exit(0)


def start(args: list[str]) -> int:
    """``ngrok start --none --log stdout ...``: serve the agent API until killed."""
    mode = os.environ.get("FAKE_NGROK_MODE", "ok")
    config_path = option(args, "--config")
    config = read_config(config_path)
    token = option(args, "--authtoken") or (config.get("agent") or {}).get("authtoken")
    record(
        {
            "event": "start",
            "pid": os.getpid(),
            "argv": args,
            "config_path": config_path,
            "config_mode": oct(os.stat(config_path).st_mode & 0o777) if config_path else None,
            "authtoken": token,
            "region": option(args, "--region"),
            "env_authtoken": os.environ.get("NGROK_AUTHTOKEN"),
        }
    )
    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    log("info", "open config file", path=config_path or "", err="nil")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Agent(), mode))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{server.server_address[1]}"
    log("info", "starting web service", obj="web", addr=addr, allow_hosts="[]")
    if mode == "bad-token":
        log(
            "eror",
            "session closing",
            obj="tunnels.session",
            err=(
                "authentication failed: The authtoken you specified does not look like a proper "
                f"ngrok tunnel authtoken.\\nYour authtoken: {token}\\nInstructions to install your "
                "authtoken are on your ngrok dashboard:\\nhttps://dashboard.ngrok.com/get-started/"
                "your-authtoken\\r\\n\\r\\nERR_NGROK_105\\r\\n"
            ),
        )
        sys.stderr.write("ERROR:  authentication failed: ERR_NGROK_105\n")
        return 1
    if mode == "offline":
        while True:
            log(
                "eror",
                "failed to reconnect session",
                obj="tunnels.session",
                err=(
                    'failed to dial ngrok server with address "connect.ngrok-agent.com:443": '
                    "dial tcp: lookup connect.ngrok-agent.com on 127.0.0.53:53: "
                    "server misbehaving"
                ),
            )
            time.sleep(0.5)
    if mode == "hang":
        while True:  # up, but never connected and silent: pyngrok blocks in readline
            time.sleep(1)
    if mode == "slow":
        time.sleep(float(os.environ.get("FAKE_NGROK_DELAY", "1")))
    log("info", "client session established", obj="tunnels.session")
    log("info", "tunnel session started", obj="tunnels.session")
    while True:
        time.sleep(1)


def main(argv: list[str]) -> int:
    """Dispatch the subcommands pyngrok uses."""
    args = [a for a in argv if a not in ("--log", "stdout")] if argv[:1] != ["start"] else argv
    if args[:1] in (["--version"], ["version"], ["-v"]):
        print(f"ngrok version {VERSION}")
        return 0
    if args[:2] == ["config", "add-authtoken"]:
        print(f"Authtoken saved to configuration file: {option(args, '--config') or 'ngrok.yml'}")
        return 0
    if args[:1] == ["start"]:
        return start(args[1:])
    sys.stderr.write(f"fake ngrok: unsupported command {args[:2]}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
