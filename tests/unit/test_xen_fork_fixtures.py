"""tests/vm/test_xen.py's ``forked`` and ``clone`` fixtures and its site test, the real code, with the two
machines replaced by stand-ins: whichever side fails, the other's verdict is still reported."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MODULE = '''
import contextlib
import subprocess
from pathlib import Path

import pytest

import tests.vm.test_xen as xen
from tests.vm.test_xen import (  # noqa: F401 - the fixtures and the collecting tests under test
    clone, copy_mail, forked, test_libvirt_xen_driver_saves_and_restores_two_domus_across_a_real_reboot_without_domain0,
    test_site_installs_the_agent_and_controller_on_the_xen_dom0_idempotently)

SNAPSHOT_FAILS, CLONE_FAILS, RUNS_FAIL = {snapshot_fails}, {clone_fails}, {runs_fail}
LIBVIRT_FAILS = {libvirt_fails}


class Original:
    def snapshot(self, directory):
        if SNAPSHOT_FAILS:
            raise RuntimeError("QMP migrate: no space left on device")
        (directory / "state").write_bytes(b"state")
        return xen.Snapshot(machine=None, state=directory / "state")


@pytest.fixture(scope="module")
def dom0():
    return Original()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return tmp_path_factory.mktemp("ansible") / "inventory.ini", None


@contextlib.contextmanager
def from_snapshot(workdir, snapshot, smtp_port=None):
    if CLONE_FAILS:
        raise RuntimeError("the VM did not resume from its saved state within 600 s")
    yield "the clone"


def site_runs(dom0, installed, tmp):
    if RUNS_FAIL:
        raise AssertionError("operator check: hostagent-fleet.service is failed")
    said = ("debian12 : ok=68 changed=0 unreachable=0 failed=0\\n/var/lib/hostagent-rpc/.ssh/authorized_keys: "
            'restrict,from=\\\\"127.0.0.1\\\\",command=\\\\"/opt/hostagent/venv/bin/hostagent rpc --allow '
            'read,maintenance --key hostagent-controller')
    done = subprocess.CompletedProcess([], 0, said, "")
    return xen.SiteRuns('hypervisor = "auto"', done, done)


def libvirt_story(vm, tmp_path):
    assert vm is not None
    if LIBVIRT_FAILS:
        raise AssertionError("timed out after 600 s waiting for the dom0 to reboot")


xen.from_snapshot = from_snapshot
xen.site_runs = site_runs
xen.libvirt_story = libvirt_story


def test_on_the_clone(clone):
    assert clone == "the clone"
'''


def outcomes(pytester: pytest.Pytester, **faults: bool) -> dict[str, str]:
    faults.setdefault("libvirt_fails", False)
    pytester.makepyfile(test_fork=MODULE.format(**{f"{k}": v for k, v in faults.items()}))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", "-W", "ignore::UserWarning")
    said = {}
    for line in result.outlines:
        for verdict in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(verdict + " "):
                said[line.split("::")[1].split()[0]] = verdict
    said["output"] = "\n".join(result.outlines)
    return said


SITE = "test_site_installs_the_agent_and_controller_on_the_xen_dom0_idempotently"
LIBVIRT = "test_libvirt_xen_driver_saves_and_restores_two_domus_across_a_real_reboot_without_domain0"


def test_a_clone_that_cannot_start_hides_nothing_of_the_originals_runs(pytester: pytest.Pytester) -> None:
    said = outcomes(pytester, snapshot_fails=False, clone_fails=True, runs_fail=True)
    assert said["test_on_the_clone"] == "ERROR" and said[SITE] == "FAILED", said["output"]
    assert "did not resume" in said["output"] and "operator check: hostagent-fleet.service" in said["output"]


def test_a_failed_snapshot_fails_the_clones_tests_and_the_original_still_runs(pytester: pytest.Pytester) -> None:
    said = outcomes(pytester, snapshot_fails=True, clone_fails=False, runs_fail=False)
    assert said["test_on_the_clone"] == "ERROR" and said[SITE] == "PASSED", said["output"]
    assert "could not be snapshotted" in said["output"] and "no space left" in said["output"]


def test_both_sides_pass_alone(pytester: pytest.Pytester) -> None:
    said = outcomes(pytester, snapshot_fails=False, clone_fails=False, runs_fail=False)
    assert said["test_on_the_clone"] == "PASSED" and said[SITE] == "PASSED" and said[LIBVIRT] == "PASSED", \
        said["output"]


def test_the_originals_libvirt_story_fails_in_its_own_test_only(pytester: pytest.Pytester) -> None:
    """The libvirt story runs on the original, in its pool after the runs: its failure is its test's verdict,
    raised there with its message, and the clone's tests and the site test keep theirs."""
    said = outcomes(pytester, snapshot_fails=False, clone_fails=False, runs_fail=False, libvirt_fails=True)
    assert said[LIBVIRT] == "FAILED" and said[SITE] == "PASSED" and said["test_on_the_clone"] == "PASSED", \
        said["output"]
    assert "waiting for the dom0 to reboot" in said["output"]
