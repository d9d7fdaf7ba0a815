"""Progress bars of long steps: shown in a terminal and in a file, where they redraw seldom."""

import io

from talkinghead.progress import FILE_INTERVAL, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_file_redraws_seldom_but_reports_the_end():
    log = io.StringIO()  # not a terminal: a log file
    bar = progress_bar(range(500), total=500, desc="fit", file=log)
    assert bar.mininterval == FILE_INTERVAL
    assert sum(1 for _ in bar) == 500
    bar.close()
    redraws = log.getvalue().split("\r")
    assert len([r for r in redraws if r.strip()]) <= 3  # the start, maybe one more, the end
    assert "500/500" in log.getvalue()


def test_progress_in_a_terminal_keeps_tqdms_pace_and_can_be_switched_off():
    assert progress_bar(total=3, file=_Terminal()).mininterval == 0.1
    assert progress_bar(total=3, file=io.StringIO(), mininterval=2.0).mininterval == 2.0  # an explicit interval wins
    quiet = io.StringIO()
    for _ in progress_bar(range(5), enabled=False, file=quiet):
        pass
    assert quiet.getvalue() == ""
