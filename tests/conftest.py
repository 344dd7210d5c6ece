"""Shared test helpers: run the CLI in-process and capture its exit code and output."""

from __future__ import annotations

import re

import pytest

from weightsmith.cli import main

# A path in an error message: an absolute or ./-relative run of non-space characters with a slash.
_PATHLIKE = re.compile(r"(?<![\w.])(?:\.{0,2}/)[^\s'\"]*")


def words_of(err: str) -> str:
    """An error message with every path taken out, so a test that greps it matches the message's
    own words and never the name of a temporary folder that happens to contain them."""
    return _PATHLIKE.sub("<path>", err)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def words(self) -> str:
        """stderr without the paths in it (see ``words_of``)."""
        return words_of(self.err)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``weightsmith ARGS`` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
