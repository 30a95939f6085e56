"""The project's own source files a module runs, and their digest.

A module runs the files of `pipeline/` and `stages/` it imports, directly or through each other
(imports inside functions included): dvc.yaml lists exactly these as a stage's code, and a
checkpoint records their digest, so an edit to code a stage does not run neither reruns it nor
orphans its checkpoint.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: pipeline/ and stages/ side by side
PACKAGES = ("pipeline", "stages")


def _imported_names(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline import distributed` imports the module pipeline/distributed.py
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def imported_sources(entry: Path, root: Path = ROOT) -> list[Path]:
    """`entry` and every file of pipeline/ and stages/ it imports, directly or not, sorted, as paths
    relative to `root` (`stages/train.py`, `pipeline/training.py`, ...)."""
    entry = entry.resolve().relative_to(root.resolve())
    found = {entry}
    pending = [entry]
    while pending:
        tree = ast.parse((root / pending.pop()).read_text(encoding="utf-8"))
        for name in _imported_names(tree):
            if name.split(".")[0] not in PACKAGES:
                continue
            candidate = Path(*name.split(".")).with_suffix(".py")
            if (root / candidate).is_file() and candidate not in found:
                found.add(candidate)
                pending.append(candidate)
    return sorted(found)


def sources_digest(files: Iterable[Path], root: Path = ROOT) -> str:
    """SHA-256 of the files' relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.as_posix().encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()


def code_digest(entry: Path, root: Path = ROOT) -> str:
    """The digest of the code `entry` runs: itself and what it imports of pipeline/ and stages/."""
    return sources_digest(imported_sources(entry, root), root)
