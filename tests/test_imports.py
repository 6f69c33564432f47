"""The project's own import graph: no cycle among the root modules, and no library code imports an entry script."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOT_MODULES = {p.stem for p in ROOT.glob("*.py")}
# These drive the others: run_demo.py chains the run scripts, patch_sweep.py runs them per grid, recipes.py
# parses their flags as the scripts do.
MAY_IMPORT_ENTRY_SCRIPTS = {"run_demo.py", "scripts/patch_sweep.py", "scripts/recipes.py"}


def imported_root_modules(path: Path) -> set[str]:
    """Root modules that ``path`` imports anywhere in it, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in ROOT_MODULES)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imported_root_modules_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom utils import x\n\ndef f():\n    import models\n    from torch import nn\n")
    assert imported_root_modules(source) == {"utils", "models"}


def test_no_import_cycle_among_root_modules():
    graph = {name: imported_root_modules(ROOT / f"{name}.py") - {name} for name in ROOT_MODULES}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_module_or_script_imports_an_entry_script():
    offenders = []
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in MAY_IMPORT_ENTRY_SCRIPTS:
            continue
        entry = sorted(m for m in imported_root_modules(path) if m.startswith("run_") and m != path.stem)
        offenders += [f"{rel} imports {m}.py" for m in entry]
    assert not offenders, "; ".join(offenders)
