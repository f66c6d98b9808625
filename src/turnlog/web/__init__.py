"""The built-in web chat: static files only (``static/``), served by ``turnlog.http.web``.

``static/reducer.js`` is a symbolic link to ``reducer/js/reducer.js``, the JS reducer's one
source: the page imports it from here, the server serves it like the other files, and a
wheel carries its content (hatchling copies what a link points to). Running the page needs
no Node.
"""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
