"""`import instance` (and the protocol modules) must not pull in heavy or dev-only packages."""
import json
import subprocess
import sys

HEAVY = ["torch", "chronos", "pulumi", "pulumi_aws", "click", "transformers", "pandas", "pyarrow"]


def test_instance_protocol_imports_stay_light():
    code = (
        "import sys, json; import instance, instance.protocol.layout, instance.protocol.status, instance.protocol.state, "
        "instance.protocol.artifacts, instance.protocol.aws; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert not [m for m in HEAVY if m in loaded]


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
# Which rooms of instance/ each room may import: three floors, no arrow back up.
ALLOWED = {
    "protocol": {"protocol"},
    "model": {"protocol", "model"},
    "boot": {"protocol", "boot"},
    "agent": {"protocol", "model", "boot", "agent"},
}
FORBIDDEN_TOP = {"automation", "pulumi", "pulumi_aws", "click", "moto"}


def _imports(path):
    """(module names, project rooms) that a file of instance/ imports, relative imports resolved."""
    import ast

    room = path.relative_to(ROOT / "instance").parts[0]
    names, rooms = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
            elif node.level == 1:
                rooms.add(room)
            else:  # from ..protocol.x import y, or from ..model import training
                target = (node.module or "").split(".")[0] or node.names[0].name
                rooms.add(target)
    for name in names:
        parts = name.split(".")
        if parts[0] == "instance" and len(parts) > 1:
            rooms.add(parts[1])
    return names, rooms


def test_instance_rooms_import_only_downwards():
    wrong = []
    for path in sorted((ROOT / "instance").rglob("*.py")):
        parts = path.relative_to(ROOT / "instance").parts
        if len(parts) == 1:
            assert path.name == "__init__.py", f"{path.name}: every module of instance/ lives in one of its four rooms"
            continue
        names, rooms = _imports(path)
        outside = sorted(n for n in names if n.split(".")[0] in FORBIDDEN_TOP)
        upward = sorted(rooms - ALLOWED[parts[0]])
        if outside or upward:
            wrong.append(f"{'/'.join(parts)} imports {outside + upward}")
    assert not wrong, "; ".join(wrong)


def test_cli_modules_leave_plotting_and_data_packages_until_a_report_is_made():
    """`chronos-train monitor` stays fast: matplotlib, pandas and the training stack load only
    inside the report (or training) code that needs them."""
    code = (
        "import sys, json; import automation.cli.main, automation.report.page, automation.report.plots, "
        "automation.report.compare, automation.cli.render, automation.runs.records, automation.cli.follow; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    loaded = set(json.loads(out))
    assert not [m for m in ("matplotlib", "pandas", "pyarrow", "numpy", "torch", "chronos", "pulumi") if m in loaded]
