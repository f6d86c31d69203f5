"""The role never installs a silent agent (issue #35, docs/alerts.md, "Never silent"): real
``ansible-playbook`` runs of the role's own never-silent asserts (its preflight imports them) and its
neighbour tasks on this machine (a local
connection), on copies of Debian 12's mdadm.conf, /etc/default/mdadm and smartd.conf.  The tasks
that act on services (``hostagent_services``) are skipped, and the play's handlers only say that
they were notified: nothing of this machine changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible/roles/hostagent"
FIXTURES = REPO / "tests/fixtures/coexist"


def play(tmp_path: Path, **variables: object) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    files = {"mdadm.conf": tmp_path / "mdadm.conf", "mdadm.default": tmp_path / "mdadm.default",
             "smartd.conf": tmp_path / "smartd.conf"}
    for name, path in files.items():
        shutil.copy(FIXTURES / name, path)
    playbook = tmp_path / "play.yml"
    playbook.write_text(f"""- name: The role's preflight and neighbour tasks
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files: ["{ROLE}/defaults/main.yml"]
  tasks:
    - name: Never silent
      ansible.builtin.include_tasks: "{ROLE}/tasks/never_silent.yml"
    - name: Neighbours
      ansible.builtin.include_tasks: "{ROLE}/tasks/neighbours.yml"
  handlers:
    - name: Restart mdmonitor
      ansible.builtin.debug: {{msg: "handler Restart mdmonitor"}}
    - name: Reload smartd
      ansible.builtin.debug: {{msg: "handler Reload smartd"}}
""")
    extra = {"hostagent_mdadm_conf": str(files["mdadm.conf"]), "hostagent_mdadm_default": str(files["mdadm.default"]),
             "hostagent_smartd_conf": str(files["smartd.conf"]),
             "hostagent_neighbour_files": [str(p) for p in files.values()], **variables}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook),
                           "-e", f"@{tmp_path / 'extra.json'}", "--skip-tags", "hostagent_services"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
                               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "HOME": str(tmp_path)})
    return done, {name: path.read_text() for name, path in files.items()}


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def test_an_empty_recipient_list_is_refused_and_nothing_is_changed(tmp_path: Path) -> None:
    done, files = play(tmp_path, hostagent_alert_to=[])
    assert done.returncode != 0
    assert "nobody would be mailed about a failed disk" in done.stdout, done.stdout[-3000:]
    assert files["mdadm.conf"] == (FIXTURES / "mdadm.conf").read_text()
    assert files["smartd.conf"] == (FIXTURES / "smartd.conf").read_text()


def test_the_explicit_opt_out_is_accepted_and_keeps_mdadms_and_smartds_mail(tmp_path: Path) -> None:
    done, files = play(tmp_path, hostagent_alert_to=[], hostagent_alerts_elsewhere="the NOC's Alertmanager")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert lines(files["mdadm.conf"], "MAILADDR") == ["MAILADDR root"]  # mdadm still mails
    assert lines(files["mdadm.conf"], "PROGRAM") == ["PROGRAM /opt/hostagent/venv/bin/hostagent-md-event"]
    assert files["smartd.conf"] == (FIXTURES / "smartd.conf").read_text()  # smartd still mails


def test_with_recipients_hostagent_mails_and_mdadm_and_smartd_do_not(tmp_path: Path) -> None:
    done, files = play(tmp_path, hostagent_alert_to=["ops@example.com"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert lines(files["mdadm.conf"], "MAILADDR") == []
    assert lines(files["mdadm.conf"], "#MAILADDR") == ["#MAILADDR root  # hostagent mails md failures "
                                                       "(hostagent_mdadm_monitor)"]
    assert lines(files["smartd.conf"], "DEVICESCAN") == ["DEVICESCAN -d removable -n standby -m <nomailx>"]


def test_the_opt_out_may_not_also_switch_mdadms_monitor_off(tmp_path: Path) -> None:
    done, _ = play(tmp_path, hostagent_alert_to=[], hostagent_alerts_elsewhere="the hook",
                   hostagent_mdadm_monitor="disabled")
    assert done.returncode != 0 and "may not" in done.stdout, done.stdout[-3000:]
