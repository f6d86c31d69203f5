"""Host: rooted reads, the command runner's timeout, snapshot replay and recording."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.errors import CommandTimeout, ProbeUnavailable
from hostagent.host import SYSFS_WRITE, Host, sysfs_write
from hostagent.names import is_kernel_name


def test_reads_are_rooted(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mdstat").write_text("Personalities : \n")
    host = Host(tmp_path)
    assert host.read_text("/proc/mdstat") == "Personalities : \n"
    assert host.read_optional("/proc/nothing") is None
    assert host.listdir("/proc") == ["mdstat"]
    assert host.listdir("/sys/block") == []
    with pytest.raises(ValueError):
        host.read_text("proc/mdstat")


def test_hung_command_is_killed_after_its_timeout() -> None:
    host = Host("/")
    with pytest.raises(CommandTimeout, match=r"sleep 60: no answer within 0.5 s; killed"):
        host.run("sleep", ["60"], name="sleep", timeout=0.5)
    # the process group is gone: no sleep 60 of ours is left
    time.sleep(0.2)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x0060\x00"
                 and _parent(p) == os.getpid()]
    assert leftovers == []


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_missing_tool_is_probe_unavailable() -> None:
    with pytest.raises(ProbeUnavailable, match="no-such-tool-xyz: command not found"):
        Host("/").run("no-such-tool-xyz", [], name="x")


def test_record_then_replay_a_command(tmp_path: Path) -> None:
    out = tmp_path / "snap"
    live = Host("/", record_to=out)
    result = live.run("sh", ["-c", "echo hello; echo oops >&2; exit 4"], name="demo")
    assert (result.returncode, result.stdout, result.stderr) == (4, "hello\n", "oops\n")
    assert (out / "_commands/sh/demo").read_text() == "hello\n"
    replayed = Host(out).run("sh", ["-c", "this is never run"], name="demo")
    assert (replayed.returncode, replayed.stdout, replayed.stderr) == (4, "hello\n", "oops\n")


def test_replay_without_recording_names_the_file(tmp_path: Path) -> None:
    expected = r"has no recorded output of smartctl -x /dev/sda .*_commands/smartctl/sda"
    with pytest.raises(ProbeUnavailable, match=expected):
        Host(tmp_path).run("smartctl", ["-x", "/dev/sda"], name="sda")


def test_recording_keeps_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src/sys/block/md0/md"
    (src / "dev-sda1").mkdir(parents=True)
    (src / "rd0").symlink_to("dev-sda1")
    out = tmp_path / "out"
    host = Host(tmp_path / "src", record_to=out)
    assert host.readlink("/sys/block/md0/md/rd0") == "dev-sda1"
    assert os.readlink(out / "sys/block/md0/md/rd0") == "dev-sda1"


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\0" * (1 << 20))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield device.removeprefix("/dev/")
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_sysfs_write_is_done_by_python_in_a_child(loop_device: str) -> None:
    """The kernel's own attribute, written and read back; no shell is involved."""
    attribute = f"/sys/block/{loop_device}/queue/read_ahead_kb"
    before = Path(attribute).read_text().strip()
    value = "256" if before != "256" else "512"
    result = Host().run(SYSFS_WRITE, [attribute, value], name="t", timeout=10)
    assert result.returncode == 0 and result.argv == (SYSFS_WRITE, attribute, value), result
    assert Path(attribute).read_text().strip() == value
    refused = Host().run(SYSFS_WRITE, [f"/sys/block/{loop_device}/queue/read_ahead_kb", "lots"], name="t", timeout=10)
    assert refused.returncode == 1 and "Invalid argument" in refused.stderr  # the kernel's own answer, named


@pytest.mark.parametrize(("path", "value"), [
    ("/tmp/x", "1"), ("/sys/../etc/passwd", "1"), ("/sys/block/sda;id/device/state", "offline"),
    ("/sys/block/sda/device/state", "offline\nx"), ("/sys/block/sda/device/state", ""),
    ("/sys/block/$(id)/device/delete", "1"),
])
def test_a_sysfs_write_outside_plain_sys_paths_is_refused(path: str, value: str) -> None:
    with pytest.raises(ProbeUnavailable, match="not a sysfs attribute"):
        sysfs_write(path, value)
    with pytest.raises(ProbeUnavailable, match="not a sysfs attribute"):
        Host().run(SYSFS_WRITE, [path, value], name="t", timeout=10)


@pytest.mark.parametrize(("name", "ok"), [
    ("sda", True), ("nvme0n1p2", True), ("dm-3", True), ("md127", True), ("md_d0", True), ("cciss!c0d0", True),
    ("xvda1", True), ("mmcblk0p1", True), ("nvme0", True), ("0:0:0:0", True),
    ("", False), (".", False), ("..", False), ("../sda", False), ("sda;id", False), ("$(id)", False),
    ("sd`x`", False), ("sd{a,b}", False), ("sda b", False), ("sda\n", False), ("a" * 65, False), ("sdä", False),
])
def test_kernel_device_names(name: str, ok: bool) -> None:
    assert is_kernel_name(name) is ok
