"""Packaging: installed, the project occupies ``meterwatch.*`` only, and the test suite collects
with plain ``pytest`` from the repository root."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_the_meterwatch_namespace(tmp_path: Path) -> None:
    # Built from a copy: setuptools builds in the source tree (build/, *.egg-info).
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "build", "*.egg-info", "__pycache__", ".*_cache", "dist"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("meterwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"meterwatch"}, top
    for pkg in ("core", "collector", "protocols", "storage", "analytics", "alerts", "simulators"):
        assert f"meterwatch/{pkg}/__init__.py" in names
    assert "meterwatch/protocols/maps/eastron-sdm630.yaml" in names  # package data
    assert "meterwatch/alerts/static/index.html" in names
    # the starter configs: `config init` (real meters) and the demo, whose file is the
    # repository's config.yaml (a symlink in the source tree, a plain file in the wheel)
    wheel_zip = zipfile.ZipFile(wheel)
    assert wheel_zip.read("meterwatch/data/demo.yaml") == (ROOT / "config.yaml").read_bytes()
    assert b"gateways:" in wheel_zip.read("meterwatch/data/gateway.yaml")
    assert not any(n.startswith(("meterwatch/tests", "meterwatch/bench")) for n in names)


def test_the_installed_package_imports_from_anywhere(tmp_path: Path) -> None:
    code = (
        "import meterwatch.collector.writer, meterwatch.protocols.register_map as rm; "
        "print(len(rm.load_map('eastron-sdm630').fields))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_plain_pytest_collects_from_the_root() -> None:
    pytest_bin = Path(sys.executable).with_name("pytest")
    out = subprocess.run(
        [str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "tests collected" in out.stdout


def test_config_init_works_outside_the_repository(tmp_path: Path) -> None:
    meterwatch = Path(sys.executable).with_name("meterwatch")
    run = subprocess.run(
        [str(meterwatch), "run"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "meterwatch config init" in " ".join(run.stderr.split())
    for args in (["config", "init"], ["config", "check"]):
        out = subprocess.run(
            [str(meterwatch), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
