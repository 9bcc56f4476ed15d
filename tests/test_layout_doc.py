"""The layout the docs describe is the tree: every path they name exists, and every package is named."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

# The documents with a "## Layout" section, and the section's heading.
LAYOUT_DOCS = ("README.md", "docs/development.md")
HEADING = "## Layout"
PACKAGES = ("specq", "tasks", "workers")

_CODE = re.compile(r"`([^`\s]+)`")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def layout_section(text: str) -> str:
    """The text under ``## Layout`` up to the next heading of the same level (its ``###`` included)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start + 1:end])


def named_paths(section: str, doc: Path, root: Path = ROOT) -> set[str]:
    """Repository paths the section names: code spans with a ``/``, the first cell of each
    table row, and relative link targets (resolved against the document's folder)."""
    names = {m for m in _CODE.findall(section) if "/" in m and "<" not in m and "://" not in m}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells:
            names.update(_CODE.findall(cells[0]))
    for target in _LINK.findall(section):
        if "://" not in target:
            names.add((doc.parent / target).resolve().relative_to(root.resolve()).as_posix())
    return names


def exists(name: str, root: Path = ROOT) -> bool:
    """A file or folder of the tree. A package named by its folder (``specq/cli/``) may
    still be one module (``specq/cli.py``): Python imports ``specq.cli`` either way."""
    path = root / name
    if name.endswith("/"):
        return path.is_dir() or path.with_suffix(".py").is_file() if path.name else False
    return path.exists()


def named_everywhere() -> set[str]:
    names: set[str] = set()
    for doc in LAYOUT_DOCS:
        path = ROOT / doc
        names |= named_paths(layout_section(path.read_text(encoding="utf-8")), path)
    return names


@pytest.mark.parametrize("doc", LAYOUT_DOCS)
def test_every_path_the_layout_names_exists(doc):
    path = ROOT / doc
    names = named_paths(layout_section(path.read_text(encoding="utf-8")), path)
    assert names, f"{doc} has no {HEADING!r} section naming paths"
    assert sorted(n for n in names if not exists(n)) == []


def _tracked_folders() -> set[str]:
    """Folders of the repository that git tracks files in (not the hidden ones)."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {f.split("/")[0] + "/" for f in out.splitlines() if "/" in f and not f.startswith(".")}


def test_the_layout_names_every_top_level_folder_and_package():
    names = named_everywhere()
    subpackages = {f"{top}/{p.parent.name}/" for top in PACKAGES for p in (ROOT / top).glob("*/__init__.py")}
    # A folder is named by itself or by a path inside it.
    missing = sorted(f for f in _tracked_folders() | subpackages if not any(n.startswith(f) for n in names))
    assert missing == [], f"add these to the layout in {' or '.join(LAYOUT_DOCS)}: {missing}"


def test_the_layout_check_sees_a_missing_path(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "cli.py").write_text("")
    (tmp_path / "docs").mkdir()
    text = ("# x\n## Layout\n| path | what |\n|---|---|\n| `Makefile` | make |\n"
            "See `pkg/cli/`, `pkg/gone.py`, `SPECQ_X` and [the cli](../pkg/cli.py#top).\n"
            "## Next\n`pkg/later.py`\n")
    names = named_paths(layout_section(text), tmp_path / "docs" / "guide.md", root=tmp_path)
    assert names == {"Makefile", "pkg/cli/", "pkg/gone.py", "pkg/cli.py"}  # the next section is not read
    assert sorted(n for n in names if not exists(n, tmp_path)) == ["Makefile", "pkg/gone.py"]
    assert not exists("pkg/gone/", tmp_path)
