"""The gateway install in deploy/: the systemd unit passes `systemd-analyze verify`, hardened as
documented; the container recipe runs the service as a non-root user on its two volumes.

`systemd-analyze verify` (Debian's ``systemd`` package; ``make test`` installs it) loads the
unit as systemd would and reports unknown or malformed settings and an ExecStart that is not an
executable. Without ``--recursive-errors`` it exits 0 whatever it finds, so the test passes
``--recursive-errors=no`` (fail on the unit's own warnings, not on dependencies a container
lacks) and also requires its output to be empty. ``--root`` points it at a directory holding
the unit where the install puts it and a stand-in for the ExecStart binary at the documented
path (``/opt/meterwatch/bin/meterwatch``), so nothing on this machine has to be installed; a
control run with a misspelt setting proves the check is live here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.support.servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "meterwatch.service"
DROP_IN = DEPLOY / "meterwatch.service.d" / "restart-backoff.conf"
INSTALLED = Path("etc/systemd/system/meterwatch.service")


def settings(text: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (sections merged; a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(root: Path, unit_text: str, drop_in: str | None = None) -> tuple[int, str]:
    """Install ``unit_text`` (and a drop-in) under ``root`` with an ExecStart stand-in; verify."""
    analyze = require_binary(("systemd-analyze", "/usr/bin/systemd-analyze"), "systemd")
    unit = root / INSTALLED
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text)
    if drop_in is not None:
        d = unit.parent / "meterwatch.service.d"
        d.mkdir(exist_ok=True)
        (d / DROP_IN.name).write_text(drop_in)
    exe = Path(shlex.split(settings(unit_text)["ExecStart"][0])[0])
    assert exe.is_absolute(), exe
    stand_in = root / exe.relative_to("/")
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    res = subprocess.run(
        [
            analyze, "verify", "--man=no", "--recursive-errors=no", f"--root={root}",
            f"/{INSTALLED}",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return res.returncode, (res.stdout + res.stderr).strip()


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    code, out = verify(tmp_path / "root", UNIT.read_text())
    assert code == 0 and out == "", out
    # the check is live here: a misspelt setting is reported
    code, out = verify(tmp_path / "bad", UNIT.read_text().replace("PrivateTmp=", "PrivatTmp="))
    assert code != 0 and "PrivatTmp" in out, out


def test_the_systemd_unit_is_hardened_and_restarts_with_a_limit() -> None:
    s = settings(UNIT.read_text())
    assert s["User"] == ["meterwatch"] and s["Group"] == ["meterwatch"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/meterwatch"] == [f"/var/lib/{s['StateDirectory'][0]}"]
    assert s["WorkingDirectory"] == ["/var/lib/meterwatch"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key
    assert s["CapabilityBoundingSet"] == [""]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"] == ["10s"]
    assert s["StartLimitBurst"] == ["5"] and s["StartLimitIntervalSec"] == ["15min"]
    assert s["EnvironmentFile"] == ["-/etc/meterwatch/meterwatch.env"]
    # ExecStart is where deploy/README.md installs, on the config it writes
    assert s["ExecStart"] == [
        "/opt/meterwatch/bin/meterwatch run --config /etc/meterwatch/config.yaml"
    ]
    readme = (DEPLOY / "README.md").read_text()
    assert "python3 -m venv /opt/meterwatch" in readme
    assert "meterwatch config init /etc/meterwatch/config.yaml" in readme


def test_the_backoff_drop_in_needs_systemd_254_and_is_otherwise_clean(tmp_path: Path) -> None:
    analyze = require_binary(("systemd-analyze", "/usr/bin/systemd-analyze"), "systemd")
    banner = subprocess.check_output([analyze, "--version"], text=True)
    found = re.match(r"systemd (\d+)", banner)
    assert found, banner
    version = int(found[1])
    code, out = verify(tmp_path / "root", UNIT.read_text(), DROP_IN.read_text())
    if version >= 254:
        assert code == 0 and out == "", out
    else:  # only its two new keys are unknown to an older systemd, which ignores them
        assert code != 0
        unknown = sorted(re.findall(r"Unknown key '(\w+)'", out))
        assert unknown == ["RestartMaxDelaySec", "RestartSteps"], out
        assert len(out.splitlines()) == 2, out


def test_the_container_runs_as_a_user_of_its_own_on_two_volumes() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    ins: dict[str, list[str]] = {}
    for line in lines:
        op, _, arg = line.partition(" ")
        ins.setdefault(op.upper(), []).append(arg.strip())
    assert re.fullmatch(r"python:3\.\d+-slim", ins["FROM"][0])
    assert ins["USER"] == ["meterwatch"]
    assert "useradd --system" in " ".join(ins["RUN"])
    volumes = set(re.findall(r'"([^"]+)"', ins["VOLUME"][0]))
    assert volumes == {"/etc/meterwatch", "/var/lib/meterwatch"}
    assert ins["WORKDIR"] == ["/var/lib/meterwatch"]
    assert ins["ENTRYPOINT"] == ['["meterwatch"]']
    cmd = re.findall(r'"([^"]+)"', ins["CMD"][0])
    assert cmd[:2] == ["run", "--config"] and Path(cmd[2]).parent == Path("/etc/meterwatch")
    assert f"meterwatch config init {cmd[2]}" in " ".join(ins["RUN"])  # a config is there
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)  # no local state or secrets in the image
