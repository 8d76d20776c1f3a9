"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

procly's docstrings say :class:`Queue` or :mod:`procly.context` (Sphinx style); Markdown
would show the role's name. This turns ``:role:`target``` into ```target``` and drops the
``::`` that introduces a literal block in reStructuredText (Markdown's indented block is
enough), before mkdocstrings renders the docstring. The source is not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|exc|data|obj|const):`~?([^`]+)`")
LITERAL_INTRO = re.compile(r"(\S)::$", re.M)


class RstRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        text = ROLE.sub(r"`\1`", docstring.value)
        docstring.value = LITERAL_INTRO.sub(r"\1:", text)
