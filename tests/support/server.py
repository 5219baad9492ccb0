"""CairnServer: a real `python -m server` process on 127.0.0.1, for tests that talk HTTP.

The data folder is made with `server init`, users with `server user add` (password through
$CAIRN_PASSWORD), and `server serve` runs in the background with its JSON log going to a
file (never a pipe that could fill up). The first start listens on a free port the kernel
picks (`--listen 127.0.0.1:0`, read back from the "listening" log line); restarts reuse it.
"""

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shared.protocol.models import ALL_VAULTS, SignInRequest, TokenResponse
from shared.protocol.paths import HEALTHZ, SIGN_IN
from tests.support.certs import ServerCert

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


class CairnServer:
    """One server with its own data folder under `root` (see the module docstring)."""

    def __init__(self, root: Path, *, tls: ServerCert | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.tls = tls
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user_ids: dict[str, int] = {}

    # --- set-up ---

    def init(self, **options: str) -> "CairnServer":
        """`server init`, then set `options` in server.toml (`key = value` lines; values are
        TOML text, e.g. max_object_size='"1MiB"')."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.run("init", "--listen", "127.0.0.1:0")
        config = self.data / "server.toml"
        text = config.read_text()
        for key, value in options.items():
            text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text)
            if count != 1:
                raise KeyError(f"server.toml has no single {key!r} line")
        config.write_text(text)
        return self

    def add_user(self, name: str, password: str, *, admin: bool = False,
                 quota: str | None = None) -> None:
        extra = (["--admin"] if admin else []) + (["--quota", quota] if quota else [])
        self.run("user", "add", name, *extra, env={"CAIRN_PASSWORD": password})

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run an admin command on this server's data folder; its standard output."""
        proc = subprocess.run(
            [sys.executable, "-m", "server", *args, "--data", str(self.data)],
            cwd=REPO, env=self._env(env), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"server {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    # --- the process ---

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "CairnServer":
        """Start `server serve` and wait until it answers /healthz."""
        if self.running:
            raise RuntimeError("the server is already running")
        args = [sys.executable, "-m", "server", "serve", "--data", str(self.data)]
        if self.port is not None:
            args += ["--listen", f"127.0.0.1:{self.port}"]
        if self.tls:
            args += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        seen = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(args, cwd=REPO, env=self._env(None), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while self.port is None or not self._healthy():
            if self._proc.poll() is not None:
                raise RuntimeError(f"cairn-server exited with {self._proc.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"cairn-server did not start in time: {self.log_tail()}")
            if self.port is None:
                self.port = self._listening_port(seen)
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it does not stop within 10 s)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (default SIGKILL) and wait for the process to end."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(sig)
        self._proc.wait(timeout=10)

    def restart(self) -> "CairnServer":
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    # --- looking behind the API ---

    def user_id(self, name: str) -> int:
        if name not in self._user_ids:
            self._user_ids[name] = self._read_user_id(name)
        return self._user_ids[name]

    def _read_user_id(self, name: str) -> int:
        from server.db.database import Database  # only tests that look behind the API need it

        db = Database.open(self.data / "server.db")
        try:
            user = db.get_user(name)
        finally:
            db.close()
        if user is None:
            raise KeyError(f"no user {name}")
        return user.id

    def vault_dir(self, user: str, vault: str) -> Path:
        """Where the server keeps `user`'s vault `vault` (a LocalStore folder)."""
        return self.data / "vaults" / str(self.user_id(user)) / vault

    def sign_in(self, user: str, password: str, *, device: str = "test device",
                scopes: tuple[str, ...] = ("backup", "restore"),
                vaults: tuple[str, ...] = (ALL_VAULTS,)) -> TokenResponse:
        """Sign in over HTTP without the client library (for fixtures that need a token)."""
        body = {**SignInRequest(user, password, device).to_json(), "scopes": list(scopes),
                "vaults": list(vaults)}
        return TokenResponse.from_json(self._post_json(SIGN_IN, body))

    # --- internals ---

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CAIRN_PASSWORD"}
        env["PYTHONPATH"] = str(REPO)
        return {**env, **(extra or {})}

    def _listening_port(self, offset: int) -> int | None:
        with open(self.log, "rb") as log:
            log.seek(offset)
            for line in log.read().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "listening":
                    return int(str(entry["url"]).rsplit(":", 1)[1])
        return None

    def _ssl(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + HEALTHZ, timeout=2,
                                        context=self._ssl()) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _post_json(self, path: str, body: object) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10, context=self._ssl()) as resp:
            return json.loads(resp.read())
