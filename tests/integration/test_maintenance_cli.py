"""hostagent maintenance: schedule with preflight, dry run, list, status, cancel (issue #8, in progress)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli import hostagent
from tests.integration.test_hypervisor import node


def setup(tmp_path: Path) -> tuple[list[str], Path]:
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[maintenance]\nuri = "{node(tmp_path)}"\nsave_dir = "{tmp_path}"\n')
    state = tmp_path / "state"
    return ["--config", str(config), "maintenance"], state


def test_schedule_list_cancel(tmp_path: Path) -> None:
    base, state = setup(tmp_path)
    refused = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--state-dir", str(state))
    assert refused.returncode == 3
    assert "guest gpu1: cannot save: host device passthrough" in refused.stderr
    assert "override with --force" in refused.stderr
    dry = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--force", "--dry-run", "--state-dir", str(state))
    assert dry.returncode == 0 and "(dry run: nothing scheduled)" in dry.stdout
    assert "guest web1 (256 MiB): save" in dry.stdout and not (state / "maintenance").exists()
    planned = hostagent(*base, "--reboot-at", "2099-01-01T04:00:00+00:00", "--force", "--json", "--reason",
                        "kernel", "--state-dir", str(state))
    document = json.loads(planned.stdout)
    assert document["reboot_at"].endswith("(2099-01-01 04:00 UTC)") and document["reboot_at_utc"].startswith("2099")
    again = hostagent(*base, "--reboot-at", "2099-02-01 04:00", "--force", "--state-dir", str(state))
    assert again.returncode == 3 and "is already planned" in again.stderr
    rows = json.loads(hostagent(*base, "list", "--json", "--state-dir", str(state)).stdout)
    assert [(r["id"], r["phase"], r["reason"]) for r in rows] == [(document["id"], "planned", "kernel")]
    assert {n: g["state"] for n, g in rows[0]["guests"].items()} == {"db1": "planned", "web1": "planned"}  # not gpu1
    assert rows[0]["guests"]["web1"]["owner"] == "alice@example.com"  # from the domain metadata
    assert hostagent(*base, "cancel", "--state-dir", str(state)).returncode == 0
    status = hostagent(*base, "status", "--state-dir", str(state))
    assert status.stdout.strip() == "no maintenance scheduled"
    assert "no maintenance is scheduled" in hostagent(*base, "cancel", "--state-dir", str(state)).stderr


def test_times_in_the_past_or_unreadable_are_refused(tmp_path: Path) -> None:
    base, state = setup(tmp_path)
    past = hostagent(*base, "--reboot-at", "2001-01-01 04:00", "--state-dir", str(state))
    assert past.returncode == 3 and "which is in the past" in past.stderr
    bad = hostagent(*base, "--reboot-at", "monday 4pm", "--state-dir", str(state))
    assert bad.returncode == 3 and "not a time" in bad.stderr


def test_run_now_saves_and_reboots(tmp_path: Path) -> None:
    base, state = setup(tmp_path)
    rebooted = tmp_path / "rebooted"
    config = Path(base[1])
    config.write_text(config.read_text() + f'reboot_command = ["sh", "-c", "touch {rebooted}"]\n')
    scheduled = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--force", "--json", "--state-dir", str(state))
    assert scheduled.returncode == 0, scheduled.stderr
    ran = hostagent(*base, "run-now", "--json", "--state-dir", str(state))
    assert ran.returncode == 0, ran.stderr
    document = json.loads(ran.stdout)
    # gpu1 (host device passthrough) cannot be saved: with --force it is shut down, to be started again
    assert document["phase"] == "rebooting"
    assert document["guests"] == {"db1": "saved", "web1": "saved", "gpu1": "shut_down"}
    assert rebooted.exists()
    again = hostagent(*base, "run-now", "--state-dir", str(state))
    assert again.returncode == 3 and "no planned maintenance to run" in again.stderr


def test_a_reason_with_control_characters_is_refused_and_an_old_one_is_shown_escaped(tmp_path: Path) -> None:
    base, state = setup(tmp_path)
    for reason in ("kernel\x1b[2J", "line one\nline two", "x" * 201):
        refused = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--force", "--reason", reason,
                            "--state-dir", str(state))
        assert refused.returncode == 3 and "at most 200 printable characters" in refused.stderr, refused.stderr
        assert "\x1b" not in refused.stderr and not (state / "maintenance").exists()
    planned = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--force", "--json", "--reason", "kernel",
                        "--state-dir", str(state))
    journal = state / "maintenance" / f"{json.loads(planned.stdout)['id']}.json"
    document = json.loads(journal.read_text())
    document["reason"] = "kernel\x1b]0;owned\x07"  # written by an older version, or by hand
    journal.write_text(json.dumps(document))
    listed = hostagent(*base, "list", "--state-dir", str(state))
    assert "kernel\\x1b]0;owned\\x07" in listed.stdout and "\x1b" not in listed.stdout, listed.stdout


def test_a_maintenance_never_goes_on_with_another_hypervisor_than_it_was_planned_with(tmp_path: Path) -> None:
    """Seen on the Xen dom0: a sandbox that hid /proc/xen made the daemon pick libvirt, where every
    planned DomU looked stopped, and the host rebooted with none saved.  The journal records the
    backend; another one at the scheduled time fails the run before anything is touched."""
    base, state = setup(tmp_path)
    config = Path(base[1])
    rebooted = tmp_path / "rebooted"
    config.write_text(config.read_text() + f'reboot_command = ["touch", "{rebooted}"]\n')
    scheduled = hostagent(*base, "--reboot-at", "2099-01-01 04:00", "--force", "--json", "--state-dir", str(state))
    assert scheduled.returncode == 0, scheduled.stderr
    journal = json.loads((state / "maintenance" / f"{json.loads(scheduled.stdout)['id']}.json").read_text())
    assert journal["hypervisor"] == f"libvirt {node(tmp_path)}"
    config.write_text(config.read_text().replace(f'uri = "{node(tmp_path)}"', 'uri = "test:///default"'))
    ran = hostagent(*base, "run-now", "--json", "--state-dir", str(state))
    outcome = json.loads(ran.stdout)
    assert outcome["phase"] == "failed" and not rebooted.exists(), outcome
    assert f"the guests were planned with libvirt {node(tmp_path)}, but the hypervisor is now libvirt " \
           "test:///default" in outcome["error"] and "not rebooted" in outcome["error"]
    assert set(outcome["guests"].values()) == {"planned"}  # nothing was touched
