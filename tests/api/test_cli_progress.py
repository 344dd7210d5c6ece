"""The command line's side of progress: events become tqdm bars (closed when their job ends), and
weightsmith's warnings become note: lines only while a command runs."""

from __future__ import annotations

import logging

from weightsmith.cli_progress import TerminalBars, notes_on_stderr
from weightsmith.progress import Progress, bar, reporting, wanted


def test_bars_follow_the_events_and_close(capsys):
    bars = TerminalBars()
    with reporting(bars):
        assert wanted()  # huggingface_hub's own bars may show too
        with bar(3, "convert", "tensor") as tick:
            tick.update()
            assert bars._bars["convert"].n == 1
            tick.set_postfix_str("blocks.0")
            tick.update(2)
        assert not bars._bars  # closed at the job's end
    assert not wanted()
    assert "convert" in capsys.readouterr().err


def test_without_a_callback_nothing_is_drawn(capsys):
    with bar(2, "quiet") as tick:
        tick.update(2)
    bars = TerminalBars()
    bars(Progress("late", 1, 2, "it", finished=True))  # an end without a start draws nothing
    assert capsys.readouterr() == ("", "")


def test_notes_print_only_inside_a_command(capsys):
    log = logging.getLogger("weightsmith.io.atomic")
    with notes_on_stderr():
        log.warning("removed 1 stale partial output")
    log.warning("after the command")
    assert capsys.readouterr().err == "note: removed 1 stale partial output\n"
