"""tests/suite.py, `make test`'s runner: it reads pytest's closing lines into the counts it prints."""

from __future__ import annotations

from tests.suite import counts


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
