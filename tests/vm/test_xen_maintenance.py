"""Maintenance on real Xen (issue #20): the installed agent on Debian's Xen 4.17 dom0 under QEMU.

The dom0 is ``tests/vm/test_xen.py``'s, right after ansible/site.yml's first run: started from its
snapshot when ``make test`` runs both (tests/vm/xen_dom0.py), or booted and installed here when this
module runs alone. In order:
1. the installed agent saves three PV DomUs with xl, dom0 reboots for real, hostagent.service
   restores them at boot, and the owners' notices reach an aiosmtpd sink on this machine;
2. failures on real Xen: a save that cannot be written, a save image deleted before the restore,
   and the agent killed between the saves and the reboot;
3. the same cycle through libvirtd's libxl driver (``xen:///system``);
4. mdadm's monitor beside the agent, as the role sets it up: a failed member of a mirror on the
   dom0's two extra disks is mailed once, by hostagent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from hostagent.maintenance import notices
from tests import guests
from tests.debian_vm import DebianVM
from tests.integration.test_alerts import Sink, sink_server
from tests.vm.xen_dom0 import (
    HOSTAGENT,
    OWNERS,
    PV,
    boot_id,
    configure,
    console,
    finish,
    installed_dom0,
    printed,
    schedule,
    ssh_ok,
    start_pv,
    wait_for,
)


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[Controller, Sink]]:
    with sink_server() as server:
        yield server


@pytest.fixture(scope="module")
def dom0(tmp_path_factory: pytest.TempPathFactory, mail: tuple[Controller, Sink]) -> Iterator[DebianVM]:
    with installed_dom0(tmp_path_factory.mktemp("xen"), mail[0].port) as machine:
        yield machine


def test_xl_maintenance_saves_every_domu_reboots_dom0_for_real_and_restores_them_at_boot(
        dom0: DebianVM, mail: tuple[Controller, Sink], tmp_path: Path) -> None:
    for name in PV:
        if name not in ssh_ok(dom0, "xl list"):
            start_pv(dom0, name)
    preview = json.loads(ssh_ok(dom0, f"{HOSTAGENT} maintenance --reboot-at now --reason preview --dry-run --json"))
    assert "guest Domain-0" not in "\n".join(preview["preflight"])
    assert [line for line in preview["preflight"] if line.startswith("guest ")] == [
        f"guest {name} (96 MiB): save" for name in PV]
    old_boot = boot_id(dom0)
    sink = mail[1]
    sent_before = len(sink.messages)
    journal_id = schedule(dom0, 90, "kernel update")
    wait_for("the owners' notices", lambda: {m["to"][0] for m in sink.messages[sent_before:]} >= {
        "alice@example.com", "bob@example.com"}, 90, vm=dom0)
    wait_for("dom0 to reboot", lambda: boot_id(dom0) not in (old_boot, None), 600, 5, vm=dom0)
    final = finish(dom0, journal_id)
    assert final.phase == "done", final
    assert {n: g.outcome for n, g in final.guests.items()} == dict.fromkeys(PV, "restored")
    assert all(g.restored_by == "hostagent" and g.downtime_s and g.downtime_s > 0 for g in final.guests.values())
    assert all(g.clock == "kept by Xen (pv guest)" for g in final.guests.values())
    saves = [final.guests[n].save_started for n in PV]
    assert max(saves) - min(saves) < min(g.downtime_s or 0 for g in final.guests.values())  # in parallel
    for name in PV:
        before = printed(dom0, name)
        wait_for(f"{name} to print after the reboot", lambda n=name, b=before: printed(dom0, n) >= b + 2, 60, vm=dom0)
        log = console(dom0, name, tmp_path / f"{name}.log")
        times = guests.uptimes(log)
        assert guests.boots(log) == 1 and times == sorted(times), log.read_text()[-1500:]
    wait_for("the after-notices", lambda: sum("your downtime" in m["subject"] for m in sink.messages) >= 2, 120,
             vm=dom0)
    after = {m["to"][0]: m["body"] for m in sink.messages if "your downtime" in m["subject"]}
    for name, owner in OWNERS.items():  # each owner hears each guest's measured downtime and outcome
        assert f"{name:<14} {notices.downtime_text(final.guests[name]):<15} " in after[owner], after[owner]
    assert "pv1" not in after["bob@example.com"] and "pv2" not in after["alice@example.com"]
    assert ssh_ok(dom0, "ls -A /var/lib/xen/save").split() == []  # used images and their configs are gone


def test_xl_failures_a_save_that_cannot_be_written_and_an_image_deleted_before_the_restore(
        dom0: DebianVM, tmp_path: Path) -> None:
    """pv2's image path is a directory, so xl cannot write it: with on_save_failure = "skip" it goes
    down with the host and is started again from its configuration.  The reboot command deletes
    pv3's image first, so pv3 is booted afresh and reported so."""
    ssh_ok(dom0, "mkdir -p /var/lib/xen/save/pv2.save && cat > /root/delete-then-reboot <<'EOF'\n#!/bin/sh\n"
                 "rm -f /var/lib/xen/save/pv3.save\nexec systemctl reboot\nEOF\nchmod +x /root/delete-then-reboot")
    configure(dom0, 'on_save_failure = "skip"', 'reboot_command = ["/root/delete-then-reboot"]')
    old_boot = boot_id(dom0)
    journal_id = schedule(dom0, 30, "failures")
    wait_for("dom0 to reboot", lambda: boot_id(dom0) not in (old_boot, None), 600, 5, vm=dom0)
    final = finish(dom0, journal_id)
    outcomes = {n: (g.outcome, g.unsaved) for n, g in final.guests.items()}
    assert outcomes == {"pv1": ("restored", None), "pv2": ("restarted", "with_host"), "pv3": ("cold_booted", None)}
    assert "Failed to open temp file /var/lib/xen/save/pv2.save" in (final.guests["pv2"].error or "")
    assert "its save image /var/lib/xen/save/pv3.save was gone" in (final.guests["pv3"].error or "")
    boots = {n: guests.boots(console(dom0, n, tmp_path / f"{n}.log")) for n in PV}
    assert boots == {"pv1": 1, "pv2": 2, "pv3": 2}  # the truth on the consoles: two guests booted afresh
    ssh_ok(dom0, "rmdir /var/lib/xen/save/pv2.save")


def test_xl_agent_killed_between_the_saves_and_the_reboot_restores_without_rebooting(
        dom0: DebianVM) -> None:
    ssh_ok(dom0, "mkdir -p /etc/systemd/system/hostagent.service.d /run/hostagent-pauses && "
                 "printf '[Service]\\nEnvironment=HOSTAGENT_TEST_PAUSE=before-reboot "
                 "HOSTAGENT_TEST_PAUSE_DIR=/run/hostagent-pauses\\nReadWritePaths=/run/hostagent-pauses\\n' > "
                 "/etc/systemd/system/hostagent.service.d/"
                 "pause.conf && systemctl daemon-reload")
    configure(dom0)
    old_boot = boot_id(dom0)
    journal_id = schedule(dom0, 30, "killed")
    wait_for("the worker to reach the reboot", lambda: dom0.ssh("test -e /run/hostagent-pauses/before-reboot"
                                                                ).returncode == 0, 300, vm=dom0)
    assert "pv1" not in ssh_ok(dom0, "xl list")  # saved: only the reboot is left
    ssh_ok(dom0, "systemctl kill -s KILL hostagent.service; rm /etc/systemd/system/hostagent.service.d/pause.conf; "
                 "systemctl daemon-reload; systemctl reset-failed hostagent.service; systemctl start hostagent.service")
    final = finish(dom0, journal_id, 300)
    assert boot_id(dom0) == old_boot
    assert final.phase == "failed" and "not rebooted" in (final.error or ""), final
    assert {n: g.outcome for n, g in final.guests.items()} == dict.fromkeys(PV, "restored")
    assert all(n in ssh_ok(dom0, "xl list") for n in PV)


def test_libvirt_xen_driver_saves_and_restores_two_domus_across_a_real_reboot_without_domain0(
        dom0: DebianVM, tmp_path: Path) -> None:
    ssh_ok(dom0, "for d in pv1 pv2 pv3; do xl destroy $d; done")
    for name in ("lv1", "lv2"):
        ssh_ok(dom0, f"virsh -c xen:///system domxml-from-native xen-xl /etc/xen/{name}.cfg > /root/{name}.xml && "
                     f"virsh -c xen:///system define /root/{name}.xml && virsh -c xen:///system start {name}")
        before = printed(dom0, name)
        wait_for(f"{name} to print", lambda n=name, b=before: printed(dom0, n) > b, 120, vm=dom0)
    configure(dom0, 'uri = "xen:///system"')
    preview = json.loads(ssh_ok(dom0, f"{HOSTAGENT} maintenance --reboot-at now --reason preview --dry-run --json"))
    assert [line for line in preview["preflight"] if line.startswith("guest ")] == [
        "guest lv1 (96 MiB): save", "guest lv2 (96 MiB): save"]  # Domain-0 is not a guest
    old_boot = boot_id(dom0)
    journal_id = schedule(dom0, 30, "libvirt")
    wait_for("dom0 to reboot", lambda: boot_id(dom0) not in (old_boot, None), 600, 5, vm=dom0)
    final = finish(dom0, journal_id)
    assert final.phase == "done", final
    assert {n: (g.outcome, g.image) for n, g in final.guests.items()} == {
        n: ("restored", f"/var/lib/libvirt/libxl/save/{n}.save") for n in ("lv1", "lv2")}
    assert ssh_ok(dom0, "ls -A /var/lib/libvirt/libxl/save").split() == []  # the used images are deleted
    for name in ("lv1", "lv2"):
        before = printed(dom0, name)
        wait_for(f"{name} to print after the reboot", lambda n=name, b=before: printed(dom0, n) >= b + 2, 60, vm=dom0)
        log = console(dom0, name, tmp_path / f"{name}.log")
        times = guests.uptimes(log)
        assert guests.boots(log) == 1 and times == sorted(times), log.read_text()[-1500:]


def audit_records(vm: DebianVM) -> list[dict[str, object]]:
    text = vm.ssh("cat /var/lib/hostagent/audit.jsonl").stdout
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_mdadm_monitor_hands_a_failed_member_to_hostagent_and_only_hostagent_mails(
        dom0: DebianVM, mail: tuple[Controller, Sink]) -> None:
    """The role's default, hostagent_mdadm_monitor: hostagent, on the dom0's real mdadm and udev.

    msmtp is the dom0's sendmail, relaying to the sink, so mdadm's own mail would arrive if mdadm sent
    any: with the package's ``MAILADDR root`` it does (the control), with the role's mdadm.conf it
    hands its events to hostagent-md-event instead, and a failed member is one mail, hostagent's."""
    _, sink = mail
    ssh_ok(dom0, "printf 'account default\\nhost 10.0.2.100\\nport 25\\nfrom mdadm@debian12\\naliases /etc/aliases\\n'"
                 " > /etc/msmtprc && echo 'root: root@example.com' > /etc/aliases")
    conf = ssh_ok(dom0, "cat /etc/mdadm/mdadm.conf")
    assert f"PROGRAM {HOSTAGENT}-md-event" in conf.splitlines(), conf
    assert not [line for line in conf.splitlines() if line.startswith("MAILADDR")], conf
    # smartd, as the role leaves it by default: monitoring, without mail
    devicescan = ssh_ok(dom0, "grep '^DEVICESCAN' /etc/smartd.conf").strip()
    assert devicescan == "DEVICESCAN -d removable -n standby -m <nomailx>", devicescan
    ssh_ok(dom0, "mdadm --create /dev/md9 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                 "/dev/vdb /dev/vdc")
    # udev starts mdmonitor.service for a new mirror (63-md-raid-arrays.rules), with the role's mdadm.conf
    wait_for("mdmonitor.service", lambda: dom0.ssh("systemctl is-active mdmonitor.service").stdout.strip()
             == "active", 60, vm=dom0)

    # the control: the package's setting mails, through msmtp, to the sink
    ssh_ok(dom0, "echo 'MAILADDR root' > /root/mdadm-package.conf && "
                 "mdadm --monitor --scan --oneshot --test --config=/root/mdadm-package.conf")
    wait_for("mdadm's own test mail", lambda: any(m["to"] == ["root@example.com"] for m in sink.messages), 60, vm=dom0)
    assert any("TestMessage" in m["subject"] and "md9" in m["subject"] for m in sink.messages
               if m["to"] == ["root@example.com"]), sink.messages
    # the role's setting: the same test reaches the audit log, and no mail
    mdadm_mail = [m for m in sink.messages if m["to"] == ["root@example.com"]]
    ssh_ok(dom0, "mdadm --monitor --scan --oneshot --test")
    assert {("TestMessage", "/dev/md9"), ("TestMessage", "/dev/md/9")} & {
        (r.get("mdadm_event"), r.get("array")) for r in audit_records(dom0)}, audit_records(dom0)[-5:]

    before = len(sink.messages)
    ssh_ok(dom0, "mdadm /dev/md9 --fail /dev/vdc")

    def handled() -> bool:
        records = audit_records(dom0)
        mdadm_saw = any(r.get("mdadm_event") == "Fail" and r.get("array") in ("/dev/md9", "/dev/md/9")
                        and r.get("member") == "/dev/vdc" for r in records)
        alerted = {r.get("subject") for r in records if r.get("event") == "alert"} >= {"md9", "md9/vdc"}
        return mdadm_saw and alerted and len(sink.messages) > before
    wait_for("mdadm's Fail event in the audit log and hostagent's mail", handled, 120, vm=dom0)
    alerts = [r for r in audit_records(dom0) if r.get("event") == "alert" and str(r.get("subject")).startswith("md9")]
    said = [(r["kind"], r["code"], r["subject"], r["severity"], r["message_id"][:9]) for r in alerts]
    assert len({r["message_id"] for r in alerts}) == 1, said  # both alerts, in one mail
    [incident] = sink.messages[before:]
    assert incident["subject"] == "[hostagent] CRITICAL md9 degraded on debian12 (+1 more)", incident
    assert incident["to"] == ["ops@example.com"] and "vdc failed in md9" in incident["body"]
    assert [m for m in sink.messages if m["to"] == ["root@example.com"]] == mdadm_mail  # none from mdadm

    ssh_ok(dom0, "mdadm --stop /dev/md9 && mdadm --zero-superblock /dev/vdb /dev/vdc")
