"""The layers keep to their seams: the node agent never reaches into the store, the API or the
controller; the CLI talks to the API only; the controller and the API know a node only by its
wire (``corral.node.spec``, ``client``, ``wire``). Every import counts, also one inside a
function."""

from __future__ import annotations

import ast
from pathlib import Path

import corral

ROOT = Path(corral.__file__).parent
NODE_SEAM = ("corral.node", "corral.node.spec", "corral.node.client", "corral.node.wire")


def imports(path: Path) -> set[str]:
    """Every corral module ``path`` imports (``from corral.x import y`` counts as corral.x and,
    when y is a module, corral.x.y)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            for a in node.names:
                if (ROOT.parent / (node.module + "." + a.name).replace(".", "/")).with_suffix(
                    ".py"
                ).exists() or (
                    ROOT.parent / (node.module + "." + a.name).replace(".", "/")
                ).is_dir():
                    out.add(f"{node.module}.{a.name}")
    return {m for m in out if m == "corral" or m.startswith("corral.")}


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        me = ".".join(rel.parts)
        for mod in sorted(imports(path)):
            if under(me, "corral.node") and under(
                mod,
                "corral.store",
                "corral.api",
                "corral.controller",
                "corral.cli",
                "corral.daemon",
            ):
                bad.append(f"{me} imports {mod}: the agent must not reach past its wire")
            if under(me, "corral.cli") and under(
                mod, "corral.store", "corral.controller", "corral.node"
            ):
                bad.append(f"{me} imports {mod}: the CLI talks to the API only")
            if under(me, "corral.controller", "corral.api") and under(mod, "corral.node"):
                if mod not in NODE_SEAM:
                    bad.append(f"{me} imports {mod}: reach a node only through its wire")
    return bad


def test_layers_keep_to_their_seams() -> None:
    assert violations() == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check would catch the breaks it was written for (a test that can fail)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from corral.node.driver.hotplug import GuestHoldsDisk\n")
    assert "corral.node.driver.hotplug" in imports(src)
