"""The seams of DESIGN.md, checked on the source: who may import whom."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "worldmodel", "planner", "sim", "robot_bridge")
# package -> project packages it may import (third-party libraries are not checked here)
ALLOWED = {
    "worldmodel": {"worldmodel"},  # never the body, the planner or the agent
    "planner": {"planner"},  # the world model only through planner/interface.py
    "sim": {"sim"},
    "robot_bridge": {"robot_bridge"},  # and sim/, in the simulated robot's driver alone (below)
    "agent": {"agent", "worldmodel", "planner", "sim", "robot_bridge"},
}
EXCEPTIONS = {"robot_bridge/drivers/sim.py": {"sim"}}  # the one place the bridge may see a simulation


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = project_imports(path) - ALLOWED[package] - EXCEPTIONS.get(str(path.relative_to(ROOT)), set())
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    assert "owns" in doc and "may import" in doc, package


def test_the_robot_side_never_needs_torch():
    """A robot's computer runs robot_bridge alone: no torch, no model, no planner."""
    for path in sorted((ROOT / "robot_bridge").rglob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert "torch" not in imported, path.relative_to(ROOT)
