"""automation/'s rooms import only downwards: the terminal on the report on a run's life on the
executors on the context on the sandbox on the Pulumi programs, all on a few ground modules.
A room may import its own modules and any room on a lower floor; nothing on a floor imports its
own floor's other rooms or anything above (so no two rooms can import each other)."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A room is a package of automation/ or one of its loose modules.
FLOORS = [
    {"errors", "infra_record", "interrupts"},
    {"settings"},
    {"stacks"},
    {"sandbox"},
    {"context"},
    {"datasets", "executors"},
    {"runs"},
    {"report"},
    {"cli"},
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _module_name(path: Path, base: Path) -> list[str]:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path, base: Path) -> set[str]:
    """Absolute names (under automation) that a file imports, relative imports resolved; for
    `from pkg import x` both pkg and pkg.x, so a module imported by name counts."""
    here = _module_name(path, base)
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "automation"}


def back_arrows(base: Path) -> list[str]:
    """Every import of a file under base/automation that points at its own floor or above, and
    every module that sits in no room."""
    wrong = []
    for path in sorted((base / "automation").rglob("*.py")):
        parts = _module_name(path, base)
        if len(parts) == 1:
            continue  # automation/__init__.py
        room = parts[1]
        if room not in FLOOR:
            wrong.append(f"{'/'.join(parts)} is in no room of this test's plan; give it a floor")
            continue
        for name in sorted(_imported(path, base)):
            target = name.split(".")
            if len(target) < 2 or target[1] == room:
                continue
            if target[1] not in FLOOR or FLOOR[target[1]] >= FLOOR[room]:
                wrong.append(f"{'/'.join(parts)} imports {name}")
    return wrong


def test_automation_rooms_import_only_downwards():
    wrong = back_arrows(ROOT)
    assert not wrong, "; ".join(wrong)


def test_a_planted_back_arrow_is_found(tmp_path):
    shutil.copytree(ROOT / "automation", tmp_path / "automation")
    assert back_arrows(tmp_path) == []
    control = tmp_path / "automation" / "sandbox" / "control.py"
    control.write_text(control.read_text() + "\n\ndef later():\n    from ..context import resolve\n")
    stacks = tmp_path / "automation" / "stacks" / "run.py"
    stacks.write_text(stacks.read_text() + "\nfrom automation.executors import local\n")
    assert back_arrows(tmp_path) == [
        "automation/sandbox/control imports automation.context",
        "automation/sandbox/control imports automation.context.resolve",
        "automation/stacks/run imports automation.executors",
        "automation/stacks/run imports automation.executors.local",
    ]


def test_room_packages_stay_thin():
    """A room's __init__.py names its job and holds nothing else; what a room holds lives in
    modules whose names say so (executors/ keeps its one factory, which every command asks for)."""
    rooms = sorted({p.parent for p in (ROOT / "automation").rglob("*.py")} - {ROOT / "automation"})
    assert [r.name for r in rooms if not (r / "__init__.py").is_file()] == [], "a room without its __init__.py"
    for init in sorted((ROOT / "automation").glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.parent.name}/__init__.py names its room's job"
        if init.parent.name != "executors":
            assert len(tree.body) == 1, f"{init.parent.name}/__init__.py holds more than its docstring"
