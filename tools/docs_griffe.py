"""Griffe extension for the documentation site (``mkdocs.yml`` loads it under mkdocstrings' ``extensions``).

It changes griffe's copy of each docstring only, never the package, in two ways Sphinx would
render them and Markdown does not:

- a doctest block (``>>>`` lines up to the next blank line) outside an Examples section becomes
  a fenced ``pycon`` block, with its ``# doctest:`` flags trimmed (Markdown would read the
  ``>>>`` as nested quotes);
- Sphinx cross-reference roles become autorefs references, as below.

The package's NumPy-style docstrings cross-reference with Sphinx roles (``:func:`ingest```,
``:class:`~megapairs.CLIP```, ``:meth:`get```). mkdocstrings renders Markdown and would show
those roles verbatim. This extension rewrites each role, in griffe's copy of the docstring
only, into an *optional* autorefs cross-reference: a link when the target is documented on a
page of the site, plain code otherwise (a module that has no page, a private helper). The
names are resolved the way Python scopes them, from the object the docstring belongs to.

Written Markdown references (``[text][megapairs.knn.search]``) stay required: one that does not
resolve still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>func|meth|class|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path ``target`` names, seen from ``obj``, or None when it is not a known name."""
    if target.startswith("megapairs.") or target == "megapairs":
        return target
    head, _, rest = target.partition(".")
    try:
        full = obj.resolve(head)
    except (griffe.NameResolutionError, AttributeError, KeyError):
        return None
    return f"{full}.{rest}" if rest else full


def _rewrite(obj: griffe.Object, text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        target = m["target"].strip()
        # Sphinx's "title <target>" form, "~" (show the last name only) and "!" (no link).
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)
        title = explicit["title"] if explicit else None
        target = explicit["target"] if explicit else target
        short = target.startswith("~")
        target = target.lstrip("~!.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
            if m["role"] in ("func", "meth"):
                title += "()"
        code = f"<code>{html.escape(title)}</code>"
        full = None if m["target"].lstrip().startswith("!") else _resolve(obj, target)
        if full is None:
            return code
        return f'<autoref identifier="{html.escape(full)}" optional>{code}</autoref>'

    return ROLE.sub(replace, text)


FENCE = re.compile(r"\s*(```|~~~)")
DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


def _fence_doctests(text: str) -> str:
    """Wrap each doctest block that is not already in a fence (or an Examples section) in a fence."""
    lines = text.splitlines()
    out: list[str] = []
    fenced = False
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            fenced = not fenced
        # A NumPy section title: a line followed by dashes of its length. griffe parses the
        # doctests of an Examples section itself.
        if i + 1 < len(lines) and line.strip() and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]):
            section = line.strip()
        starts = line.lstrip().startswith(">>>") and (i == 0 or not lines[i - 1].strip())
        if fenced or not starts or section == "Examples":
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(DOCTEST_FLAGS.sub("", lines[i]))
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Fence the doctest blocks and turn the Sphinx roles of every docstring of the package into
    optional cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        docstring = obj.docstring
        if docstring is not None:
            text = _fence_doctests(docstring.value)
            text = _rewrite(obj, text) if ROLE.search(text) else text
            if text != docstring.value:
                docstring.value = text
                docstring.__dict__.pop("parsed", None)  # parsed again from the new text
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)
