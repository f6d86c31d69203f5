"""hostagent collect -> hostagent check --root reproduces the same findings offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import checks
from tests.helpers import EXAMPLES, FIXTURES
from tests.integration.test_cli import hostagent


def findings(root: Path) -> tuple[int, list[tuple[str, str, str, str]], list[dict[str, object]]]:
    proc = hostagent("check", "--root", str(root), "--json")
    report = json.loads(proc.stdout)
    found = [(f["code"], f["subject"], f["severity"], f["summary"]) for f in report["findings"]]
    return proc.returncode, found, report["inventory"]["arrays"]


@pytest.mark.parametrize("source", [*(EXAMPLES / n for n in ("degraded-recovering", "imsm-container")),
                                    FIXTURES / "sysfs-md/prometheus-procfs"])
def test_round_trip(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "bundle"
    proc = hostagent("collect", "--root", str(source), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "md:" in proc.stderr  # progress per check
    meta = json.loads((out / "_meta.json").read_text())
    assert meta["schema"] == "hostagent.snapshot/1" and meta["checks"] == [m.NAME for m in checks.ALL]
    assert findings(out) == findings(source)


def test_round_trip_of_the_live_host(tmp_path: Path) -> None:
    out = tmp_path / "live"
    assert hostagent("collect", "--out", str(out)).returncode == 0
    assert findings(out)[:2] == findings(Path("/"))[:2]


def test_collect_copies_only_what_the_checks_read(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "healthy-mirror", source)
    (source / "etc").mkdir()
    (source / "etc/shadow").write_text("secret\n")
    out = tmp_path / "out"
    assert hostagent("collect", "--root", str(source), "--out", str(out)).returncode == 0
    assert not (out / "etc/shadow").exists()
    assert (out / "proc/mdstat").read_bytes() == (source / "proc/mdstat").read_bytes()


def test_collect_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious\n")
    proc = hostagent("collect", "--root", str(EXAMPLES / "healthy-mirror"), "--out", str(tmp_path))
    assert proc.returncode == 3
    assert "not an empty directory" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
