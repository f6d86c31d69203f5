"""tests/guests.py reads a guest's console while the guest writes it: only lines that have ended count."""

from __future__ import annotations

from pathlib import Path

from tests import guests


def test_a_half_written_last_line_is_not_read_as_uptime_going_back(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("uptime 122.97\r\nclock 1796670000\r\nuptime 123.98\r\nclock 17966")  # "uptime 124.99" next
    assert guests.uptimes(console) == [122.97, 123.98]
    assert guests.clocks(console) == [1796670000]
    console.write_text("uptime 122.97\nuptime 123.98\nuptime 12")
    times = guests.uptimes(console)
    assert times == sorted(times) == [122.97, 123.98]
