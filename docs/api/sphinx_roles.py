"""A griffe extension: the docstrings' Sphinx roles become mkdocstrings cross-references.

``:class:`Named```, ``:func:`~workbench.run.run``` and ``:mod:`workbench.layers``` are written the
Sphinx way in the source; here they become ``[`Named`][Named]`` links that mkdocstrings resolves
relative to the documented object (``scoped_crossrefs``). A target that resolves nowhere is a warning,
so ``mkdocs build --strict`` fails on a broken reference. Targets in other installed packages
(``secrets.randbelow``, ``torch.Tensor``) stay code: the build has no network for their inventories.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|obj|data|exc|const):`(~?)([\w.]+)(\(\))?`")


def to_crossref(match: re.Match) -> str:
    short, target, call = match.groups()
    title = f"`{target.rsplit('.', 1)[-1] if short else target}{call or ''}`"
    return title if is_external(target) else f"[{title}][{target}]"


def to_code(text: str) -> str:
    """Roles shown as code without links (for text outside a docstring's own scope)."""
    return ROLE.sub(
        lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}{m.group(3) or ''}`", text
    )


def is_external(target: str) -> bool:
    """A dotted name rooted in an importable top-level module other than ``workbench``."""
    root = target.split(".", 1)[0]
    return root != "workbench" and importlib.util.find_spec(root) is not None


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(to_crossref, obj.docstring.value)
