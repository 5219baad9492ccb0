"""`cairn-server` admin commands, run as real processes on a real data folder."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, password: str | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CAIRN_PASSWORD", None)
    if password is not None:
        full_env["CAIRN_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=full_env,
                          input=stdin or "", capture_output=True, text=True, timeout=60)


def ok(*args: str, **kw) -> str:
    result = run(*args, **kw)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(*args: str, code: int = 5, **kw) -> str:
    result = run(*args, **kw)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture
def data(tmp_path) -> str:
    path = str(tmp_path / "data")
    ok("init", "--data", path)
    return path


def test_cli_init_and_status(data) -> None:
    status = json.loads(ok("status", "--data", data, "--json"))
    assert status["users"] == 0 and status["vaults"] == 0
    assert status["server"].startswith("not answering")
    assert "already" in fails("init", "--data", data)


def test_cli_data_folder_from_environment(data) -> None:
    assert "users:" in ok("status", env={"CAIRN_SERVER_DATA": data})


def test_cli_user_add_from_env_and_stdin(data) -> None:
    ok("user", "add", "alice", "--data", data, password="pw-a")
    ok("user", "add", "bob", "--data", data, "--admin", "--quota", "2GiB", stdin="pw-b\n")
    users = {u["name"]: u for u in json.loads(ok("user", "list", "--data", data, "--json"))}
    assert users["bob"]["admin"] and users["bob"]["quota"] == 2 << 30
    assert not users["alice"]["admin"] and users["alice"]["quota"] is None
    assert "pw-a" not in (Path(data) / "server.db").read_bytes().decode("latin-1")


def test_cli_user_add_refusals(data) -> None:
    ok("user", "add", "alice", "--data", data, password="pw")
    assert "already exists" in fails("user", "add", "alice", "--data", data, password="pw")
    assert "not a valid user name" in fails("user", "add", "../x", "--data", data, password="p")
    assert "no password" in fails("user", "add", "carol", "--data", data)
    assert "not a size" in fails("user", "add", "dave", "--data", data, "--quota", "lots",
                                 password="p")


def test_cli_user_disable_enable_passwd_quota(data) -> None:
    ok("user", "add", "alice", "--data", data, password="pw")
    ok("user", "disable", "alice", "--data", data)
    [user] = json.loads(ok("user", "list", "--data", data, "--json"))
    assert user["disabled"]
    ok("user", "enable", "alice", "--data", data)
    ok("user", "passwd", "alice", "--data", data, password="new")
    ok("user", "quota", "alice", "500MiB", "--data", data)
    [user] = json.loads(ok("user", "list", "--data", data, "--json"))
    assert not user["disabled"] and user["quota"] == 500 << 20
    ok("user", "quota", "alice", "none", "--data", data)
    assert "no user" in fails("user", "disable", "nobody", "--data", data)
    assert "no user" in fails("user", "passwd", "nobody", "--data", data, password="x")


def test_cli_device_list_and_revoke_unknown(data) -> None:
    assert json.loads(ok("device", "list", "--data", data, "--json")) == []
    assert "no device" in fails("device", "revoke", "a" * 32, "--data", data)
    assert "not a valid device id" in fails("device", "revoke", "zz", "--data", data)


def test_cli_without_data_folder_is_one_clear_line(tmp_path) -> None:
    assert "no data folder" in fails("status")
    assert "cairn-server init" in fails("user", "list", "--data", str(tmp_path / "none"))


def test_cli_bad_arguments_exit_non_zero() -> None:
    result = run("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serve_announces_its_url_and_stops_on_sigterm(data) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--data", data,
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        listening = None
        while time.monotonic() < deadline and listening is None:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if record.get("event") == "listening":
                listening = record
        assert listening is not None and listening["url"] == f"http://127.0.0.1:{port}"
        status = json.loads(ok("status", "--data", data, "--json"))
        assert status["server"].startswith("not answering")  # server.toml names another port
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read()
        assert any(json.loads(line).get("event") == "stopped" for line in rest.splitlines())
    finally:
        proc.kill()
        proc.communicate()


def test_cli_serve_on_a_busy_port_is_one_clear_line(data) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "cannot listen" in fails("serve", "--data", data, "--listen",
                                        f"127.0.0.1:{port}")


def test_cli_serve_with_missing_tls_files_is_one_clear_line(data, tmp_path) -> None:
    err = fails("serve", "--data", data, "--listen", f"127.0.0.1:{free_port()}",
                "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(tmp_path / "no.key"))
    assert "TLS" in err


def test_cli_second_server_on_the_same_data_folder_is_refused(data) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--data", data,
                             "--listen", f"127.0.0.1:{free_port()}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "listening":
                break
        err = fails("serve", "--data", data, "--listen", f"127.0.0.1:{free_port()}")
        assert "in use by another cairn-server" in err
    finally:
        proc.kill()
        proc.communicate()


def test_cli_quota_zero_means_zero_not_unlimited(data) -> None:
    ok("user", "add", "alice", "--data", data, "--quota", "0", password="pw")
    [user] = json.loads(ok("user", "list", "--data", data, "--json"))
    assert user["quota"] == 0
