"""MkDocs hooks for the documentation site (``mkdocs.yml`` names this file under ``hooks:``).

The notebooks live in ``notebooks/`` at the top of the repository, outside ``docs/``. This hook
puts every ``notebooks/*.ipynb`` on the site as ``notebooks/<name>/`` and lists them under the
``Notebooks`` entry of the navigation, found by glob, so a new notebook needs no edit here or in
``mkdocs.yml``. The mkdocs-jupyter plugin then renders them (``execute: false``): nothing is copied
into ``docs/`` and nothing is left behind.

It also writes the CLI reference: the line ``<!-- megapairs --help -->`` of ``docs/cli.md``
becomes the ``--help`` text of ``megapairs`` and of each of its commands, exactly as click
prints it (the ``\\b`` blocks of examples kept as they are).
"""

from __future__ import annotations

import json
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

NOTEBOOKS = "notebooks"  # the folder, relative to the repository root, and the section of the site
NAV_TITLE = "Notebooks"
CLI_PAGE = "cli.md"
CLI_MARKER = "<!-- megapairs --help -->"
HELP_WIDTH = 80  # an 80-column terminal; the site's code blocks are about that wide


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _notebooks(config: MkDocsConfig) -> list[Path]:
    return sorted((_root(config) / NOTEBOOKS).glob("*.ipynb"))


def _title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name ("01_reading_weights" -> "01 reading weights")."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        for line in (source if isinstance(source, str) else "".join(source)).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem.replace("_", " ")


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Fill the ``Notebooks`` section of the navigation with one entry per notebook, in file-name order."""
    entries = [{_title(p): f"{NOTEBOOKS}/{p.name}"} for p in _notebooks(config)]
    found = False
    for i, item in enumerate(config.nav or []):
        if isinstance(item, dict) and NAV_TITLE in item:
            config.nav[i] = {NAV_TITLE: entries}
            found = True
    if not found:
        raise ValueError(f"mkdocs.yml: the nav needs a '{NAV_TITLE}' entry for tools/docs_hooks.py to fill")
    config.watch.append(str(_root(config) / NOTEBOOKS))  # `mkdocs serve` rebuilds when a notebook changes
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add ``notebooks/*.ipynb`` (outside ``docs_dir``) to the site's files."""
    root = _root(config)
    for path in _notebooks(config):
        src = f"{NOTEBOOKS}/{path.name}"
        if files.get_file_from_path(src) is None:
            files.append(File(src, str(root), config.site_dir, config.use_directory_urls))
    return files


def _help(command, name: str, parent=None):
    import click

    settings = {**command.context_settings, "terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    return command.get_help(ctx), ctx


def _cli_reference() -> str:
    """Markdown: a section per command with its ``--help`` text, the group first."""
    from megapairs.cli import main  # needs the built extension (`make docs` depends on `build`)

    text, ctx = _help(main, "megapairs")
    parts = [f"## megapairs\n\n```text\n{text}\n```\n"]
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        text, _ = _help(command, name, parent=ctx)
        parts.append(f"## megapairs {name}\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if CLI_MARKER not in markdown:
        raise PluginError(f"docs/{CLI_PAGE}: the line {CLI_MARKER!r} (where the --help texts go) is missing")
    return markdown.replace(CLI_MARKER, _cli_reference())
