"""Every finding code the checks emit is documented in the README's table, and every documented
code is produced by some test (its code string appears in a test other than this one)."""

from __future__ import annotations

import re

from tests.helpers import REPO

CODE = re.compile(r"\"((?:md|smart|nvme|scsi|disk|boot|net|erc)\.[a-z_]+)\"")


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", (REPO / "README.md").read_text(), re.M))


def test_every_code_a_check_emits_is_documented() -> None:
    emitted = {code for path in (REPO / "checks").glob("*.py") for code in CODE.findall(path.read_text())}
    emitted -= {"net.sample"}  # a state key, not a finding
    assert emitted - documented() == set()


def test_every_documented_code_is_produced_by_a_test() -> None:
    tests = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py") if p.name != "test_documented_codes.py")
    missing = sorted(code for code in documented() if code not in tests)
    assert missing == []
