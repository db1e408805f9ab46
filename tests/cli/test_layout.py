"""The command line is one package: only ``pipeline/cli/`` parses arguments, and the
library works without it (a service importing ``pipeline`` never loads it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).resolve().parent
CLI = PACKAGE / "cli"


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from .x`` counted from its package)."""
    package = ".".join(("pipeline", *path.parent.relative_to(PACKAGE).parts))
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_command_line_knows_argparse_and_no_library_module_imports_it() -> None:
    library = [p for p in PACKAGE.rglob("*.py") if CLI not in p.parents]
    assert len(library) > 20
    for path in library:
        imported = _imported_modules(path)
        assert "argparse" not in imported, f"{path.relative_to(PACKAGE)} imports argparse"
        cli = {m for m in imported if m == "pipeline.cli" or m.startswith("pipeline.cli.")}
        if path.name != "__main__.py":  # ``python -m pipeline`` is the command line
            assert not cli, f"{path.relative_to(PACKAGE)} imports {cli}"


def test_importing_the_library_loads_no_command_line() -> None:
    code = (
        "import sys, pipeline, pipeline.stages, pipeline.ledger, pipeline.emulator, "
        "pipeline.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.cli')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
