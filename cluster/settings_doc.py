"""The ``PULSELINE_*`` settings as a Markdown table, generated from ``cluster/settings.py``.

    python -m cluster.settings_doc > docs/settings.md

Each row: the environment variable, its type, its default, and what the comments next to the
field in ``cluster/settings.py`` say (the comment block above it, or the one at its end of
line). ``tests/test_layout.py`` checks that ``docs/settings.md`` is what this prints.
"""

from __future__ import annotations

import ast
import io
import tokenize
import typing
from pathlib import Path
from typing import Any

from cluster.settings import Settings

SOURCE = Path(__file__).with_name("settings.py")
PIPE = "\\|"  # a literal | inside a table cell
ALIASES = {"redis_url": "REDIS_URL", "ray_address": "RAY_ADDRESS"}  # read without the prefix too


def _comments(source: str) -> dict[int, str]:
    """Line number -> comment text, for every comment in ``source``."""
    out: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = token.string.lstrip("#").strip()
    return out


def _field_notes(source: str) -> dict[str, str]:
    """Field name -> its comments (the block right above it, then its end-of-line comment)."""
    comments = _comments(source)
    lines = source.splitlines()
    tree = ast.parse(source)
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    notes: dict[str, str] = {}
    for node in settings.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        block: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#") and not lines[line - 1].strip().startswith("# --"):
            block.insert(0, comments.get(line, ""))
            line -= 1
        end = node.end_lineno or node.lineno
        if end in comments and not lines[end - 1].strip().startswith("#"):
            block.append(comments[end])
        notes[node.target.id] = " ".join(part for part in block if part)
    return notes


def _default(value: Any) -> str:
    if value is None:
        return "(none)"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{value}`"


def table() -> str:
    notes = _field_notes(SOURCE.read_text())
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = f"`PULSELINE_{name.upper()}`"
        if name in ALIASES:
            env += f" or `{ALIASES[name]}`"
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        kind = (" or ".join(f"`{c}`" for c in choices) if choices
                else getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", ""))
        note = notes.get(name, "").replace("|", PIPE)
        kind = kind.replace("|", PIPE)
        rows.append(f"| {env} | {kind} | {_default(field.default)} | {note} |")
    return (
        "# Settings\n\n"
        "Every setting of a pulseline process is a `PULSELINE_*` environment variable, read once when\n"
        "the process starts (`cluster/settings.py`, one typed object passed down; the CLI's flags\n"
        "override a few). Generated from the code by `python -m cluster.settings_doc`; a test keeps\n"
        "this page and the code the same.\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    print(table(), end="")
