"""The CLI's progress display: a bar that fills when a step counts k/N; plain lines off a terminal; --quiet."""

import argparse

import pytest

from edgetvm.cli import _count_in, _progress


@pytest.mark.parametrize(
    "message, expected",
    [
        ("timing 5 variants interleaved: round 2/30", (1, 30)),
        ("uploading numpy.whl (6/6)", (5, 6)),
        ("building mnist-cnn.onnx with edgetvm (none) for rpi4", (0, None)),
        ("installing 0/0 wheels", (0, None)),
    ],
)
def test_a_counted_step_fills_the_bar(message, expected):
    assert _count_in(message) == expected


def test_off_a_terminal_each_step_is_one_plain_line(capsys):
    with _progress(argparse.Namespace(quiet=False), "benchmarking") as progress:
        progress.update("timing 2 variants interleaved: round 1/3")
    captured = capsys.readouterr()
    assert captured.err == "edgetvm: timing 2 variants interleaved: round 1/3\n" and captured.out == ""


def test_quiet_shows_nothing(capsys):
    with _progress(argparse.Namespace(quiet=True), "benchmarking") as progress:
        progress.update("round 1/3")
    assert capsys.readouterr() == ("", "")
