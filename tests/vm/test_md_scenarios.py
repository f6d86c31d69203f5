"""Real md arrays under Debian's kernel: the agent's view matches what the kernel did."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.helpers import wait_for
from tests.vm.conftest import MdHelper


def test_clean_raid1_reports_both_members_in_sync(md: MdHelper) -> None:
    md.create("1", md.members(2))
    report = md.report()
    assert report["status"] == "OK"
    [array] = report["inventory"]["arrays"]
    assert (array["name"], array["level"], array["degraded"]) == ("md0", "raid1", False)
    assert array["state"] in ("clean", "active")
    assert [m["states"] for m in array["members"]] == [["in_sync"], ["in_sync"]]
    assert [m["slot"] for m in array["members"]] == [0, 1]


def test_member_returning_errors_is_failed_by_md_and_reported(md: MdHelper) -> None:
    members = md.members(2)
    md.create("1", members)
    bad = md.kernel_name(members[1])
    md.error_out(1)
    md.vm.run("dd if=/dev/urandom of=/dev/md0 bs=4k count=16 oflag=direct conv=fsync", check=False)
    wait_for(lambda: "(F)" in md.vm.run("cat /proc/mdstat").stdout, "md to fail the member")
    findings = md.findings()
    assert ("md.degraded", "md0", "CRITICAL") in findings
    assert ("md.failed_member", f"md0/{bad}", "WARNING") in findings


def test_recovery_in_progress_is_reported_with_progress(md: MdHelper) -> None:
    members = md.members(2)
    md.create("1", members)
    md.vm.run("echo 100 > /proc/sys/dev/raid/speed_limit_min; echo 500 > /proc/sys/dev/raid/speed_limit_max")
    md.vm.run(f"mdadm --manage /dev/md0 --fail {members[1]} && mdadm --manage /dev/md0 --remove {members[1]}")
    md.vm.run(f"mdadm --zero-superblock {members[1]} && mdadm --manage /dev/md0 --add {members[1]}")

    def recovering() -> dict[str, object] | None:
        report = md.report()
        found = [f for f in report["findings"] if f["code"] == "md.recovering"]
        sync = report["inventory"]["arrays"][0]["sync"]
        return {"finding": found[0], "sync": sync} if found and sync["progress"] else None

    seen = wait_for(recovering, "md.recovering with progress")
    assert seen["finding"]["severity"] == "WARNING"  # type: ignore[index]
    sync = seen["sync"]
    assert sync["action"] == "recover"  # type: ignore[index]
    assert 0 < sync["progress"] < 1  # type: ignore[index,operator]
    rebuilding = [m for m in md.report()["inventory"]["arrays"][0]["members"] if "rebuilding" in m["states"]]
    assert [m["device"] for m in rebuilding] == [md.kernel_name(members[1])]


# In the VM: fail a member, and keep a copy of every state md shows in the next 2 s (the md files the
# agent reads, rooted under /tmp/moments/N; sync_action and sync_completed as first read, the rest read
# right after), as fast as Python can read them.  Prints the states seen.
CATCH_MOMENTS = r"""
import json, os, subprocess, sys, time
from hostagent.sources.mdsysfs import ARRAY_ATTRS, MEMBER_ATTRS
base, member = "/sys/block/md0/md", sys.argv[1]
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
def copy(source, root, text=None):
    text = read(source) if text is None else text
    if text is not None:
        os.makedirs(os.path.dirname(root + source), exist_ok=True)
        with open(root + source, "w") as f:
            f.write(text)
def keep(n, state):
    root = f"/tmp/moments/{n}"
    os.makedirs(root + base)
    copy("/proc/mdstat", root)
    for entry in os.listdir(base):
        if entry in ARRAY_ATTRS:
            copy(f"{base}/{entry}", root, state.get(entry))
        elif entry.startswith("dev-"):
            for name in MEMBER_ATTRS:
                copy(f"{base}/{entry}/{name}", root)
        elif entry.startswith("rd"):
            try:  # md takes rdN away as the failed member leaves the array: the moment goes on without it
                os.symlink(os.readlink(f"{base}/{entry}"), f"{root}{base}/{entry}")
            except FileNotFoundError:
                pass
seen, last = [], None
fail = subprocess.Popen(["mdadm", "--manage", "/dev/md0", "--fail", member])
end = time.monotonic() + 2
while time.monotonic() < end:
    state = [read(base + "/sync_action"), read(base + "/sync_completed")]
    if state != last:
        keep(len(seen), dict(zip(("sync_action", "sync_completed"), state)))
        seen.append(state)
        last = state
fail.wait()
print(json.dumps(seen))
"""


def test_the_moment_after_a_failure_with_no_spare_is_no_rebuild(md: MdHelper) -> None:
    """Debian's kernel, after ``mdadm --fail`` on a mirror with no spare: for a few milliseconds
    sync_action reads "recover" and sync_completed "0 / <size>" (or "none") while md looks for a spare
    to rebuild onto; the daemon, woken by POLLPRI on /proc/mdstat, reads exactly that moment (CI mailed
    md.recovering, then resolved it).  Every state md shows is kept and checked: none is a rebuild."""
    members = md.members(2)
    md.create("1", members)
    md.vm.run(f"cat > /tmp/catch.py <<'EOF'\n{CATCH_MOMENTS}EOF\n")
    moments: list[list[str | None]] = []
    for _attempt in range(5):  # the moment is short: catch it, under whatever load
        md.vm.run("rm -rf /tmp/moments")
        moments = json.loads(md.vm.run(f"python3 /tmp/catch.py {members[1]}", timeout=60).stdout)
        if any(action and action.strip() == "recover" for action, _ in moments):
            break
        md.vm.run(f"mdadm --manage /dev/md0 --remove {members[1]} && mdadm --zero-superblock {members[1]} "
                  f"&& mdadm --manage /dev/md0 --add {members[1]}")
        wait_for(lambda: "recovery" not in md.vm.run("cat /proc/mdstat").stdout, "the rebuild to end")
    caught = [i for i, (action, _) in enumerate(moments) if action and action.strip() == "recover"]
    assert caught, f"md never showed 'recover' after the failure: {moments}"
    for index in range(len(moments)):
        result = md.vm.hostagent(f"check --json --only md --root /tmp/moments/{index}")
        report = json.loads(result.stdout)
        codes = [f["code"] for f in report["findings"]]
        assert "md.recovering" not in codes, (moments[index], report["findings"])
        if index in caught:
            assert report["inventory"]["arrays"][0]["sync"]["action"] == "recover", report["inventory"]
    assert "md.degraded" in [f["code"] for f in md.report()["findings"]]


def degraded_severity(md: MdHelper) -> str | None:
    return next((f[2] for f in md.findings() if f[0] == "md.degraded"), None)


def test_three_way_raid1_severity_against_the_kernel(md: MdHelper) -> None:
    members = md.members(3)
    md.create("1", members)
    md.fail("md0", members[0])
    assert degraded_severity(md) == "WARNING"
    md.fail("md0", members[1])
    assert degraded_severity(md) == "CRITICAL"


def test_raid5_and_raid6_severity_against_the_kernel(md: MdHelper) -> None:
    members = md.members(4)
    md.create("5", members[:3])
    md.fail("md0", members[0])
    assert degraded_severity(md) == "CRITICAL"
    md.vm.run("mdadm --stop /dev/md0")
    md.vm.run(f"mdadm --zero-superblock {' '.join(members)}")
    md.create("6", members)
    md.fail("md0", members[0])
    assert degraded_severity(md) == "WARNING"
    md.fail("md0", members[3])
    assert degraded_severity(md) == "CRITICAL"
    array = md.report()["inventory"]["arrays"][0]
    assert (array["level"], array["raid_disks"], array["active_disks"]) == ("raid6", 4, 2)


def test_collect_in_the_vm_replays_on_the_host(md: MdHelper, tmp_path: Path) -> None:
    members = md.members(3)
    md.create("1", members)
    md.fail("md0", members[2])
    inside = json.loads(md.vm.hostagent("check --json").stdout)  # every check, not only md
    assert md.vm.hostagent("collect --out /tmp/snap").rc == 0
    packed = md.vm.run("tar -C /tmp/snap -cf - . | base64").stdout
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(packed))) as archive:
        archive.extractall(tmp_path / "snap", filter="tar")
    proc = subprocess.run([sys.executable, "-m", "hostagent", "check", "--root", str(tmp_path / "snap"), "--json"],
                          capture_output=True, text=True, timeout=60)
    outside = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert outside["findings"] == inside["findings"]
    assert outside["inventory"] == inside["inventory"]
    assert [f["code"] for f in outside["findings"] if f["check"] == "md"] == ["md.degraded", "md.failed_member"]
    assert {d["name"]: d["arrays"] for d in outside["inventory"]["disks"]}["vda"] == ["md0:dm-0"]


def test_blkdebug_holds_writes_until_resumed(md: MdHelper) -> None:
    md.vm.break_writes(1)
    md.vm.run("(dd if=/dev/urandom of=/dev/vdb bs=4k count=1 oflag=direct; echo done > /tmp/written) "
              ">/dev/null 2>&1 &")
    inflight = wait_for(lambda: md.vm.run("cat /sys/block/vdb/inflight").stdout.split() != ["0", "0"],
                        "the held write to show in /sys/block/vdb/inflight")
    assert inflight
    assert md.vm.run("cat /tmp/written", check=False).rc != 0
    md.vm.resume_writes()
    wait_for(lambda: md.vm.run("cat /tmp/written", check=False).stdout.strip() == "done", "the write to finish")


def test_hung_member_is_invisible_to_md_and_restores(md: MdHelper) -> None:
    members = md.members(2)
    md.create("1", members)
    md.hang(1)
    md.vm.run("(dd if=/dev/urandom of=/dev/md0 bs=4k count=16 oflag=direct conv=fsync; echo done > /tmp/written) "
              ">/dev/null 2>&1 &")
    wait_for(lambda: md.vm.run("cat /sys/block/md0/md/array_state").stdout.strip() == "write-pending"
             or md.vm.run("cat /sys/block/md0/inflight").stdout.split() != ["0", "0"], "the write to block")
    assert md.vm.run("cat /tmp/written", check=False).rc != 0
    assert md.findings() == []  # md never fails a hung member by itself: the agent's job (issue 6)
    md.restore(1)
    wait_for(lambda: md.vm.run("cat /tmp/written", check=False).rc == 0, "the write to finish after restore")
    assert md.report()["inventory"]["arrays"][0]["degraded"] is False
