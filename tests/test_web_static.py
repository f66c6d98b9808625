"""The web chat's files: the JS reducer has one source."""

from __future__ import annotations

from pathlib import Path

from turnlog.web import STATIC

REPO = Path(__file__).parents[1]


def test_the_page_reducer_is_the_one_source_not_a_copy() -> None:
    """static/reducer.js is a link to reducer/js/reducer.js, so the page can never run an
    older reducer than the one the JS tests check."""
    page = STATIC / "reducer.js"
    assert page.is_symlink()
    assert page.resolve() == (REPO / "reducer" / "js" / "reducer.js").resolve()
