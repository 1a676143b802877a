"""docs/architecture.md's module tree names every module of gateway/ and ui/, and only those.

Every `.py` file must be listed, `__main__.py` included, except `__init__.py`: a package is
named by its directory line (`policy/`), which must be there too. Listing an `__init__.py`
is allowed (the tree does for `gateway/` and `ui/`)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("gateway", "ui")
# A line of a tree: its indentation, then a module (`name.py`) or a package (`name/`).
ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[A-Za-z_]\w*(?:\.py|/))(?:\s|$)")
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def tree_paths(text: str) -> set[str]:
    """The paths the fenced trees of `text` name under gateway/ and ui/: modules as
    `gateway/policy/engine.py`, packages as `gateway/policy`. A level is indented two spaces
    more than its parent; a line indented further continues a description."""
    found: set[str] = set()
    for block in FENCED.findall(text):
        parents: list[tuple[int, str]] = []  # (indentation, directory) of the open packages
        last = 0
        for line in block.splitlines():
            entry = ENTRY.match(line)
            if entry is None:
                continue
            indent = len(entry["indent"])
            if indent > last + 2:
                continue  # a description that wraps onto a word like `name.py`
            while parents and parents[-1][0] >= indent:
                parents.pop()
            name = entry["name"].removesuffix("/")
            path = "/".join([*(directory for _, directory in parents), name])
            if entry["name"].endswith("/"):
                parents.append((indent, name))
            found.add(path)
            last = indent
    return {path for path in found if path.split("/")[0] in PACKAGES}


def on_disk() -> tuple[set[str], set[str]]:
    """(what the tree must name, everything it may name): modules and package directories."""
    required: set[str] = set()
    present: set[str] = set()
    for package in PACKAGES:
        for module in (REPO / package).rglob("*.py"):
            path = module.relative_to(REPO).as_posix()
            present.add(path)
            if module.name == "__init__.py":
                present.add(module.parent.relative_to(REPO).as_posix())
                required.add(module.parent.relative_to(REPO).as_posix())
            else:
                required.add(path)
    return required, present


def test_the_tree_is_read_as_nested_packages() -> None:
    text = textwrap.dedent(
        """\
        Prose that names app.py is not a tree.

        ```
        gateway/
          __init__.py        version
          app.py             the composition root
          policy/            pure library
            engine.py        decide(...); a description that wraps
                             onto model.py stays a description
          cli.py             back at the top
        ui/                  the web UI
          views/
            auth.py          sign-in
        ```
        """
    )
    assert tree_paths(text) == {
        "gateway",
        "gateway/__init__.py",
        "gateway/app.py",
        "gateway/policy",
        "gateway/policy/engine.py",
        "gateway/cli.py",
        "ui",
        "ui/views",
        "ui/views/auth.py",
    }


def test_every_module_is_in_the_tree() -> None:
    required, _ = on_disk()
    missing = sorted(required - tree_paths(DOC.read_text(encoding="utf-8")))
    assert not missing, f"docs/architecture.md's module tree does not name {missing}"


def test_the_tree_names_only_modules_that_exist() -> None:
    _, present = on_disk()
    stale = sorted(tree_paths(DOC.read_text(encoding="utf-8")) - present)
    assert not stale, f"docs/architecture.md's module tree names what does not exist: {stale}"
