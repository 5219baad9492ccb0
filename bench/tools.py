"""Installing and locating the tools under comparison, their versions, and the machine.

Everything lands in bench/.tools/ (gitignored):

- `debian/`: restic and restic-rest-server from Debian's next release, fetched with
  `apt-get download` against a private apt state folder (`apt/`: its own sources.list, lists,
  cache and an empty dpkg status), then unpacked with `dpkg-deb -x`. The system's apt sources and
  installed packages are left alone. If that fails, a `restic` already on PATH is used instead.
- `borg-venv/`: Borg from PyPI. Building it needs a few -dev packages, installed with apt-get
  when missing (root only; otherwise the error names them).
- `venv/`: matplotlib (the chart) and py-spy (the profiles); both optional.

`install()` never raises for a tool that cannot be installed: the returned `Toolset` says which
tools are missing and why, and the report shows it.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TOOLS_DIR = BENCH_DIR / ".tools"
DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = os.environ.get("BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Headers and tools Borg's sdist needs to build (Debian names).
BORG_BUILD_PACKAGES = ("libacl1-dev", "libssl-dev", "liblz4-dev", "libzstd-dev",
                       "libxxhash-dev", "pkg-config", "gcc")
INSTALL_LOG = TOOLS_DIR / "install.log"


class ToolError(Exception):
    """A tool could not be installed or run; the message is one line meant for the report."""


@dataclass(frozen=True)
class Toolset:
    """Paths of the tools that are usable, and why the others are not."""

    cairn: Path | None = None
    cairn_server: Path | None = None
    cairn_python: Path | None = None
    restic: Path | None = None
    rest_server: Path | None = None
    borg: Path | None = None
    plot_python: Path | None = None
    py_spy: Path | None = None
    missing: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)


def _run(cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         timeout: float = 900) -> str:
    """Runs `cmd`, appending its output to the install log; ToolError (last line) on failure."""
    INSTALL_LOG.parent.mkdir(parents=True, exist_ok=True)
    logger.debug("running %s", cmd)
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=None if env is None else dict(env),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ToolError(f"{cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{Path(cmd[0]).name} timed out after {timeout:.0f} s") from exc
    with INSTALL_LOG.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        words = [w for i, w in enumerate(cmd[1:], 1)
                 if not w.startswith("-") and cmd[i - 1] != "-o"][:2]
        raise ToolError(f"{' '.join([Path(cmd[0]).name, *words])}: {last}")
    return proc.stdout


def _is_root() -> bool:
    return os.geteuid() == 0


def _missing_debian_packages(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                                 capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            return []  # not a Debian system: let the build say what is missing
        if "install ok installed" not in out:
            missing.append(name)
    return missing


def _apt_install(names: list[str]) -> None:
    if not names:
        return
    if not _is_root():
        raise ToolError(f"please install: {' '.join(names)} (as root: apt-get install ...)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    logger.info("apt-get install %s", " ".join(names))
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", *names], env=env)


# --- restic and rest-server from Debian's next release -------------------------------------


def _install_restic(dest: Path) -> None:
    """Downloads restic and restic-rest-server from DEBIAN_SUITE and unpacks them into `dest`."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ToolError(f"{tool} not found (not a Debian system?)")
    apt = TOOLS_DIR / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "state/status").touch()
    signed = f"[signed-by={DEBIAN_KEYRING}] " if DEBIAN_KEYRING.exists() else ""
    (apt / "sources.list").write_text(f"deb {signed}{DEBIAN_MIRROR} {DEBIAN_SUITE} main\n")
    options = [
        "-o", f"Dir::State={apt / 'state'}",
        "-o", f"Dir::State::status={apt / 'state/status'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", "APT::Sandbox::User=root",
    ]
    logger.info("fetching restic and restic-rest-server from Debian %s", DEBIAN_SUITE)
    _run(["apt-get", *options, "-qq", "update"])
    debs = apt / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    _run(["apt-get", *options, "-qq", "download", "restic", "restic-rest-server"], cwd=debs)
    staging = dest.with_name(dest.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(staging)])
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def _ensure_restic(missing: dict[str, str]) -> tuple[Path | None, Path | None]:
    dest = TOOLS_DIR / "debian"
    restic, rest_server = dest / "usr/bin/restic", dest / "usr/bin/restic-rest-server"
    if not (restic.exists() and rest_server.exists()):
        try:
            _install_restic(dest)
        except ToolError as exc:
            logger.warning("restic from Debian %s: %s", DEBIAN_SUITE, exc)
            system = shutil.which("restic")
            missing["rest-server"] = f"not installed: {exc}"
            if system is None:
                missing["restic"] = f"not installed: {exc}"
                return None, None
            return Path(system), None
    return restic, rest_server


# --- Borg in its own venv ------------------------------------------------------------------


def _ensure_borg(missing: dict[str, str]) -> Path | None:
    venv = TOOLS_DIR / "borg-venv"
    borg = venv / "bin/borg"
    if borg.exists():
        return borg
    try:
        need = _missing_debian_packages(BORG_BUILD_PACKAGES)
        include = Path(sysconfig.get_paths()["include"]) / "Python.h"
        if not include.exists():
            need.append(f"python{sys.version_info.major}.{sys.version_info.minor}-dev")
        _apt_install(need)
        shutil.rmtree(venv, ignore_errors=True)
        logger.info("installing borgbackup from PyPI into %s (builds for about a minute)", venv)
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
              "--disable-pip-version-check", "borgbackup"], timeout=1800)
    except ToolError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        missing["borg"] = f"not installed: {exc}"
        return None
    return borg


# --- matplotlib and py-spy -----------------------------------------------------------------


def _ensure_helpers(missing: dict[str, str]) -> tuple[Path | None, Path | None]:
    venv = TOOLS_DIR / "venv"
    python = venv / "bin/python"
    try:
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(venv)])
    except ToolError as exc:
        missing["matplotlib"] = missing["py-spy"] = f"no helper venv: {exc}"
        return None, None
    found: dict[str, bool] = {}
    for package, probe in (("matplotlib", [str(python), "-c", "import matplotlib"]),
                           ("py-spy", [str(venv / "bin/py-spy"), "--version"])):
        try:
            _run(probe)
            found[package] = True
            continue
        except ToolError:
            pass
        try:
            logger.info("installing %s into %s", package, venv)
            _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  package])
            found[package] = True
        except ToolError as exc:
            missing[package] = f"not installed: {exc}"
            found[package] = False
    return (python if found["matplotlib"] else None,
            venv / "bin/py-spy" if found["py-spy"] else None)


# --- Cairn from the project's venv ---------------------------------------------------------


def _find_cairn(missing: dict[str, str]) -> tuple[Path | None, Path | None, Path | None]:
    candidates = [Path(sys.executable).parent, REPO_DIR / ".venv/bin"]
    for bindir in candidates:
        cairn, server = bindir / "cairn", bindir / "cairn-server"
        if cairn.exists() and server.exists():
            return cairn, server, bindir / "python"
    missing["cairn"] = "cairn not found in .venv (run `make setup` first)"
    return None, None, None


def _first_version(text: str) -> str:
    match = re.search(r"\d+\.\d+(\.\d+)?", text)
    return match.group(0) if match else text.strip().splitlines()[0] if text.strip() else "?"


def _versions(tools: Toolset) -> dict[str, str]:
    versions: dict[str, str] = {}

    def probe(name: str, cmd: list[str]) -> None:
        try:
            versions[name] = _first_version(_run(cmd, timeout=60))
        except ToolError as exc:
            versions[name] = f"unknown ({exc})"

    if tools.cairn_python is not None:
        probe("cairn", [str(tools.cairn_python), "-c",
                        "import importlib.metadata as m; print(m.version('cairn-backup'))"])
        try:
            commit = _run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"]).strip()
            dirty = _run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "-uno",
                          "--", "shared", "client_gui", "server"]).strip()
            versions["cairn"] += f" (git {commit}{', uncommitted changes' if dirty else ''})"
        except ToolError:
            pass
        probe("python", [str(tools.cairn_python), "--version"])
    if tools.restic is not None:
        probe("restic", [str(tools.restic), "version"])
    if tools.rest_server is not None:
        probe("rest-server", [str(tools.rest_server), "--version"])
    if tools.borg is not None:
        probe("borg", [str(tools.borg), "--version"])
    return versions


def install() -> Toolset:
    """Installs what is missing (idempotent: a second call only checks) and returns the toolset."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    missing: dict[str, str] = {}
    if shutil.which("time", path="/usr/bin:/bin") is None:
        try:
            _apt_install(["time"])  # GNU time: peak RSS of each command (see measure.py)
        except ToolError as exc:
            missing["GNU time"] = f"not installed ({exc}); peak RSS from rusage instead"
    cairn, cairn_server, cairn_python = _find_cairn(missing)
    restic, rest_server = _ensure_restic(missing)
    borg = _ensure_borg(missing)
    plot_python, py_spy = _ensure_helpers(missing)
    tools = Toolset(cairn=cairn, cairn_server=cairn_server, cairn_python=cairn_python,
                    restic=restic, rest_server=rest_server, borg=borg,
                    plot_python=plot_python, py_spy=py_spy, missing=missing)
    return replace(tools, versions=_versions(tools))


# --- the machine ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _filesystem(path: Path) -> str:
    best, fstype = "", "?"
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def machine(work: Path) -> dict[str, str]:
    """nproc, CPU model, RAM, OS, kernel, file system of the work folder and the load average."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    os_name = re.search(r'^PRETTY_NAME="?([^"\n]+)', _read("/etc/os-release"), re.M)
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "ram": f"{int(mem.group(1)) / (1 << 20):.1f} GiB" if mem else "?",
        "os": os_name.group(1) if os_name else platform.platform(),
        "kernel": platform.release(),
        "filesystem": _filesystem(work.resolve()),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
