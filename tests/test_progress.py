"""Progress without a terminal: plain lines, throttled, always the last one; silent on other ranks."""

from __future__ import annotations

from sbssl.utils.progress import progress


def test_plain_lines_when_not_a_terminal(capsys):
    with progress("pretrain 1/2", 3, "steps", every=0.0) as bar:
        for _ in range(3):
            bar.advance(status="loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("pretrain 1/2: 3/3 steps loss 0.5 (")
    with progress("synth", 50, "exams", every=3600.0) as bar:
        for _ in range(50):
            bar.advance()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [lines[0]] and lines[0].startswith("synth: 50/50 exams")  # throttled: only the last
    with progress("rank 1", 5, enabled=False) as bar:
        for _ in range(5):
            bar.advance()
    assert capsys.readouterr().err == ""
