"""The package layout stays what docs/architecture.md says (import-linter contracts in
pyproject.toml), and no module imports itself back through others (no import cycles)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "api", "cluster", "devices", "history", "launch", "leaderboards", "sims", "storage")


def test_the_import_contracts_hold() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and "KEPT" in run.stdout


def test_no_import_cycles() -> None:
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*PACKAGES)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append(" -> ".join((module, *back)))
    assert len(graph.modules) > 50  # (the graph really holds the project)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_settings_page_is_generated_from_the_code() -> None:
    """docs/settings.md is what ``python -m cluster.settings_doc`` prints (regenerate it when
    a setting changes), and it lists every setting."""
    from cluster.settings import Settings
    from cluster.settings_doc import table

    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == table(), "docs/settings.md is stale: python -m cluster.settings_doc > docs/settings.md"
    for name in Settings.model_fields:
        assert f"`PULSELINE_{name.upper()}`" in page
