"""Progress lines: redrawn in place on a terminal, throttled log lines elsewhere."""

from __future__ import annotations

import io

from hostagent.progress import ProgressBoard, describe_transfer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_are_throttled_per_item_but_final_lines_always_go_out() -> None:
    out, clock = io.StringIO(), Clock()
    board = ProgressBoard(out, every=10, tty=False, clock=clock)
    board.update("web1", "saving 1 s")
    clock.now = 5
    board.update("web1", "saving 5 s")  # within 10 s of the last line: not written
    board.update("db1", "saving 5 s")  # another item has its own clock
    clock.now = 11
    board.update("web1", "saving 11 s")
    board.update("web1", "saved", final=True)
    assert out.getvalue().splitlines() == ["web1: saving 1 s", "db1: saving 5 s", "web1: saving 11 s", "web1: saved"]


def test_a_terminal_gets_the_block_redrawn_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    board = ProgressBoard(out, tty=True, redraw=0.2, clock=clock)
    board.update("web1", "saving 1 s")
    clock.now = 1
    board.update("db1", "saving 1 s")
    clock.now = 2
    board.update("web1", "saved", final=True)
    frames = out.getvalue()
    assert frames.startswith("\x1b[Kweb1: saving 1 s\n")
    assert "\x1b[1F\x1b[Kweb1: saving 1 s\n\x1b[Kdb1: saving 1 s\n" in frames  # up one line, redraw both
    assert frames.endswith("\x1b[2F\x1b[Kweb1: saved\n\x1b[Kdb1: saving 1 s\n")


def test_transfer_descriptions() -> None:
    assert describe_transfer(None, None, 7.4) == "7 s"
    assert describe_transfer(64 * 2**20, 256 * 2**20, 4.0) == "25% of 256 MiB, 16.0 MiB/s, 4 s"
