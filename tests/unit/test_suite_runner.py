"""tests/suite.py, `make test`'s runner: it reads pytest's closing lines into the counts it prints."""

from __future__ import annotations

from pathlib import Path

from tests import suite
from tests.suite import closing_line, counts, reasons


def test_the_closing_line_with_its_rule_is_read_in_full() -> None:
    output = "tests/x.py ..F\n====== 3 failed, 820 passed, 2 skipped in 1620.31s (0:27:00) ======\n"
    assert counts(output) == {"failed": 3, "passed": 820, "skipped": 2}


def test_the_quiet_closing_line_and_errors_are_read() -> None:
    assert counts("....\n37 passed in 15.02s\n") == {"passed": 37}
    assert counts("== 1 error in 3.0s ==\n") == {"errors": 1}
    assert counts("== 2 failed, 1 passed, 3 errors in 9.1s ==\n") == {"failed": 2, "passed": 1, "errors": 3}


def test_output_without_a_closing_line_counts_nothing() -> None:
    assert counts("All checks passed!\nSuccess: no issues found in 120 source files\n") == {}
    assert counts("tests/a.py::test_x 12 passed earlier in the log\n") == {}


def test_only_the_last_line_counts_not_a_captured_one() -> None:
    output = "tests/a.py F\n----- Captured stdout -----\n== 5 passed in 1.0s ==\n== 1 failed, 2 passed in 3.3s ==\n"
    assert counts(output) == {"failed": 1, "passed": 2}
    coloured = "\x1b[31m== \x1b[1m1 failed\x1b[0m, \x1b[32m2 passed\x1b[0m in 3.3s ==\x1b[0m\n"
    assert counts(coloured) == {"failed": 1, "passed": 2}
    assert counts("== 5 passed in 1.0s ==\nTraceback (most recent call last):\nKeyError: 'x'\n") == {}
    assert counts("    7 passed in 3.2s\n") == {}


def test_the_closing_line_never_says_none_failed_when_a_part_failed() -> None:
    parts: dict[str, dict[str, object]] = {"lint": {"ok": False, "tests": {}}, "fuzz": {"ok": True,
                                                                                       "tests": {"passed": 37}}}
    assert closing_line(parts, ok=False) == "37 passed, 1 failed"
    parts["the rest"] = {"ok": False, "tests": {"passed": 800, "failed": 2, "errors": 1, "skipped": 3}}
    assert closing_line(parts, ok=False) == "837 passed, 3 failed, 3 skipped"
    assert closing_line({"x": {"ok": True, "tests": {"passed": 4}}}, ok=True) == "4 passed, 0 failed"


def test_the_reasons_are_the_last_short_summary_s_failed_lines_whole_or_cut() -> None:
    output = ("tests/a.py F\n=== FAILURES ===\nFAILED in a captured log, not a summary\n"
              "\x1b[31m=== short test summary info ===\x1b[0m\n"
              "\x1b[31mFAILED\x1b[0m tests/vm/test_xen.py::test_x - AssertionError: timed out after 600 s waiting for"
              " the dom0 to reboot\n--- the dom0's console:\n"
              "ERROR tests/a.py::test_y - RuntimeError: no SSH" + "!" * 500 + "\n== 1 failed, 1 error in 3.0s ==\n")
    said = reasons(output)
    assert said[0] == ("FAILED tests/vm/test_xen.py::test_x - AssertionError: timed out after 600 s waiting for the "
                       "dom0 to reboot")
    assert said[1].startswith("ERROR tests/a.py::test_y - RuntimeError: no SSH!") and len(said[1]) == 400
    assert len(said) == 2
    assert reasons("....\n== 4 passed in 1.0s ==\n") == []


def test_a_summary_line_without_its_message_gets_the_sections_first_error_line() -> None:
    output = ("=== FAILURES ===\n"
              "____ test_xl_failures_a_save[pv2] ____\n\n    def test():\n>       wait_for()\n"
              "E               AssertionError: timed out after 900 s waiting for clone to reboot\n"
              "E               --- the dom0's console\n"
              "____ ERROR at setup of test_other ____\nE   RuntimeError: no SSH after 300 s\n"
              "=== short test summary info ===\n"
              "FAILED tests/vm/test_xen.py::test_xl_failures_a_save[pv2]\n"
              "ERROR tests/vm/test_xen.py::test_other\n"
              "FAILED tests/a.py::test_y - KeyError: 'x'\n== 2 failed, 1 error in 9.0s ==\n")
    assert reasons(output) == [
        "FAILED tests/vm/test_xen.py::test_xl_failures_a_save[pv2] - AssertionError: timed out after 900 s waiting "
        "for clone to reboot",
        "ERROR tests/vm/test_xen.py::test_other - RuntimeError: no SSH after 300 s",
        "FAILED tests/a.py::test_y - KeyError: 'x'"]


def selected(argv: list[str], path: str) -> bool:
    """Whether pytest's command line ``argv`` collects the test file ``path`` (its paths and --ignore's)."""
    roots = [arg for arg in argv[1:] if not arg.startswith("-") and arg not in ("no:cacheprovider",)]
    ignored = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--ignore=")]

    def under(root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")
    return any(under(root) for root in roots) and not any(under(root) for root in ignored)


def test_the_parts_select_every_test_file_once_and_fuzz_is_make_fuzz_s() -> None:
    parts = suite.selections(Path("/venv/bin"), Path("/cache"))
    pytests = {name: argv for name, (argv, _) in parts.items() if argv[0].endswith("pytest")}
    assert set(pytests) == {suite.REST, *(f"{m} (beside the rest)" for m in suite.XEN_MODULES)}
    files = sorted(str(p.relative_to(suite.REPO)) for p in (suite.REPO / "tests").rglob("test_*.py"))
    assert len(files) > 50
    for path in files:
        chosen = [name for name, argv in pytests.items() if selected(argv, path)]
        assert len(chosen) == (0 if path.startswith("tests/fuzz/") else 1), (path, chosen)
    assert [parts[gate][0][-1] for gate in suite.GATES] == ["lint", "fuzz"]  # make's targets: fuzz runs there
    assert len({env["HOSTAGENT_CPU_LOG"] for name, (_, env) in parts.items() if name in pytests}) == len(pytests)
    assert len({next(a for a in argv if a.startswith("--basetemp=")) for argv in pytests.values()}) == len(pytests)


def test_each_background_part_has_its_own_log() -> None:
    names = [name for name in suite.selections(Path("/venv/bin"), Path("/cache"))
             if name not in (suite.REST, *suite.GATES)]
    assert sorted(suite.logname(name) for name in names) == ["test-xen-0.log"]
