"""The session in reducer/README.md runs as written."""

from __future__ import annotations

import doctest
from pathlib import Path

README = Path(__file__).parents[2] / "reducer" / "README.md"


def test_readme_session_runs() -> None:
    """Every example in the reducer's README prints what the README shows."""
    result = doctest.testfile(str(README), module_relative=False, verbose=False)
    assert result.attempted >= 5
    assert result.failed == 0
