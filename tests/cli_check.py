"""The bad-input suite's check (tests/bad_input/): a ``st-instruct`` run's whole answer.

A module, not conftest, so tests import it by a name no other conftest shadows (``from cli_check import ...``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# Every case runs ``st-instruct`` in-process (the ``cli`` fixture of tests/conftest.py) and checks the whole answer:
# the exit code, that the one error line names the culprit (file, key, flag or shape) and what to do, that no
# traceback was printed, and -- where the case writes -- that no partial output remains.
BAD_INPUT_LOG_ENV = "ST_INSTRUCT_BAD_INPUT_LOG"


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
    if os.environ.get(BAD_INPUT_LOG_ENV):  # scripts/bad_input_table.py collects the cases' answers
        with open(os.environ[BAD_INPUT_LOG_ENV], "a") as log:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            log.write(json.dumps({"test": test, "code": result.code, "message": line}) + "\n")
    return line
