"""Progress of long work: a bar on a terminal, a periodic line in a log file, rank 0 only."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import subprocess
import sys
import termios

from ptycl.logs import Progress, progress


def test_a_log_file_gets_periodic_lines_with_an_estimate(monkeypatch, caplog) -> None:
    monkeypatch.setenv("PTYCL_PROGRESS_EVERY_S", "0")  # a line at every step
    monkeypatch.delenv("PTYCL_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="ptycl"):
        with Progress("derpp scan0001 (2/3)", 4, unit="steps", initial=1) as shown:
            for _ in range(3):
                shown.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("derpp scan0001 (2/3): 2/4 steps (50%), 00:00 elapsed, about ")
    assert lines[-1].startswith("derpp scan0001 (2/3): 4/4 steps (100%)")
    assert lines[-1].endswith("about 00:00 left")


def test_only_rank_0_reports_and_progress_0_silences(monkeypatch, caplog) -> None:
    monkeypatch.setenv("PTYCL_PROGRESS_EVERY_S", "0")
    with caplog.at_level(logging.INFO, logger="ptycl"):
        assert list(progress(range(3), "evaluate", rank=1)) == [0, 1, 2]
        monkeypatch.setenv("PTYCL_PROGRESS", "0")
        assert list(progress(range(3), "evaluate")) == [0, 1, 2]
    assert caplog.records == []


def test_a_terminal_gets_a_bar_with_steps_and_an_estimate() -> None:
    """Run in a pseudo-terminal of 100 columns, as a user's shell would be."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    code = (
        "import time\n"
        "from ptycl.logs import progress\n"
        "for _ in progress(range(5), 'train', unit='steps'): time.sleep(0.15)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTYCL_PROGRESS")}
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert child.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "train:" in text and "steps/s" in text
    assert len(set(re.findall(r"(\d)/5 \[", text))) >= 3  # a bar that moves
    assert "elapsed" not in text  # the bar, not the log-file lines
