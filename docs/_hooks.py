"""MkDocs hook: render the reST roles left in docstrings (``:class:`X``` and friends) as plain code.

The code's docstrings use Sphinx roles; mkdocstrings' sphinx parser keeps
them as text, which would show ``:class:`` before each name.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):(?=<code>)")
_TILDE = re.compile(r"<code>~(?:[\w]+\.)*(\w+)</code>")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _TILDE.sub(r"<code>\1</code>", _ROLE.sub("", html))
