"""The bad-input suite (issue 9): every case runs ``st-instruct`` in-process and checks the whole answer.

A case asserts the exit code, that the one error line names the culprit (file, key, flag or shape) and what to do,
that no traceback was printed, and -- where the case writes -- that no partial output remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        """The lines of stderr that carry the error (progress bars and warnings excluded)."""
        return [line for line in self.err.splitlines() if ": error: " in line]


def assert_clean_failure(result: CliResult, *culprits: str, code: int = 2) -> str:
    """``result`` failed with ``code``, with exactly one error line naming every one of ``culprits`` (case
    sensitive substrings) and no traceback anywhere; returns the error line."""
    assert "Traceback" not in result.err + result.out, result.err
    assert result.code == code, (result.code, result.err)
    assert len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    for culprit in culprits:
        assert culprit in line, (culprit, line)
    return line


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> CliResult``: ``st-instruct`` with these arguments, in this process."""
    from st_instruct.cli import main

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
