"""The domain error tree drawn in ``turnlog.errors`` is the one the HTTP layer answers."""

from __future__ import annotations

import inspect
import re

from turnlog import errors
from turnlog.http.common import domain_error

DRAWN = dict(re.findall(r"(\w+)\s+(\d{3})  ", errors.__doc__ or ""))


def instance(cls: type[errors.DomainError]) -> errors.DomainError:
    if issubclass(cls, errors.TooMany):
        return cls("a limit is reached", 3)
    if issubclass(cls, errors.Overloaded):
        return cls("checkpoints are late", 3.0)
    return cls("refused")


def test_every_domain_error_is_drawn() -> None:
    """Each class of the module, and no other, has a line in the docstring's tree."""
    classes = {
        name
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError)
    }
    assert classes == DRAWN.keys()


def test_each_error_is_answered_with_the_status_drawn_beside_it() -> None:
    """The HTTP answer to each error is the status its docstring line names, with
    Retry-After where it says so."""
    for name, status in DRAWN.items():
        cls = getattr(errors, name)
        response = domain_error(None, instance(cls))  # type: ignore[arg-type]
        assert response.status_code == int(status), name
        assert ("Retry-After" in response.headers) == ("Retry-After" in _line(name)), name


def _line(name: str) -> str:
    return next(line for line in (errors.__doc__ or "").splitlines() if f" {name} " in line)
