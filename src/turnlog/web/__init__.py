"""The built-in web chat: static files only (``static/``), served by ``turnlog.http.web``.

``static/reducer.js`` is a copy of ``reducer/js/reducer.js`` made by ``make web`` and
committed, so running the page needs no Node; a test keeps the two identical.
"""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
