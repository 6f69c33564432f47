"""The code's shape, read from its source (nothing runs but the shims' imports and, in the slow tier, each console
script's ``--help``): the package's import graph has no cycle and its library never imports an entry point; the
repository root holds only the entry scripts and VideoMAE's module names; nothing patches ``sys.path``; modules
and functions stay short; only entry points exit; nothing in the package writes into the parsed ``args``; and a
test that starts a process is marked ``slow``, so the fast tier runs in process.

Each rule's checker is a plain function of source text, tested on a small example first, so a failure names the
offending module, function and line.
"""
from __future__ import annotations

import ast
import re
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "patches"

# The repository root: the entry scripts, then the design card's VideoMAE module names (thin shims over patches).
ROOT_SCRIPTS = {"run_mae_pretraining.py", "run_class_finetuning.py", "run_demo.py", "run_inference.py",
                "extract_features.py", "run_videomae_vis.py"}
ROOT_MODULES = {"modeling_pretrain.py", "modeling_finetune.py", "datasets.py", "masking_generator.py",
                "engine_for_pretraining.py", "engine_for_finetuning.py", "optim_factory.py", "utils.py"}
# Modules that drive the entry points and so may import them: the demo chains pre-training and fine-tuning, the
# sweep runs them per grid, recipes parses their flags as they do, console is the table of console scripts.
ENTRY_POINT_DRIVERS = ("patches.cli.demo", "patches.cli.console", "patches.sweep.", "patches.config.recipes")
# Where a process may be ended: module -> the module-level functions that may raise SystemExit / call sys.exit.
# patches.cli.exits.exits_on_error wraps every run script's main: it is main's exit.
EXIT_FUNCTIONS = {"patches.cli.": {"main", "cli"}, "patches.cli.exits": {"exits_on_error"},
                  "patches.perf.": {"main", "cli"}, "patches.sweep.": {"main", "cli"},
                  "patches.config.recipes": {"main"}, "patches.train.launch": {"launch"}}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
# argparse calls that declare flags: the lines of statements made of one of these calls are a flag list and do
# not count toward a function's length.
FLAG_CALLS = {"add_argument", "add_argument_group", "add_mutually_exclusive_group", "add_subparsers", "add_parser",
              "set_defaults"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``patches/x/__init__.py`` is ``patches.x``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- imports -----------------------------------------------------------------------------------------------------

def imported_modules(tree: ast.Module, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports anywhere in it (function-level and TYPE_CHECKING
    imports included; relative imports resolved). ``from a import b`` counts as importing ``a.b`` when that is a
    module, else ``a``; ``import a.b`` counts as ``a.b``. Parent packages run implicitly are not counted."""
    package = name if any(m.startswith(f"{name}.") for m in modules) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            parts = candidate.split(".")
            prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
            found.update(next(([p] for p in prefixes if p in modules), []))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(parse(path), name, set(modules)) - {name} for name, path in modules.items()}


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


def test_imported_modules_sees_function_level_relative_and_submodule_imports():
    modules = {"patches", "patches.grid", "patches.train.trainer", "patches.train.optim", "patches.data.lists"}
    tree = ast.parse("import os\nfrom patches import grid\nimport patches.data.lists\n\n"
                     "def f():\n    from .optim import cosine\n    from torch import nn\n")
    assert imported_modules(tree, "patches.train.trainer", modules) == {"patches.grid", "patches.data.lists",
                                                                        "patches.train.optim"}
    assert imported_modules(ast.parse("from patches import load"), "patches.x", modules) == {"patches"}


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def entry_modules() -> set[str]:
    """The entry points' modules: the root scripts, and each patches.cli module with a module-level main or cli."""
    names = {p.removesuffix(".py") for p in ROOT_SCRIPTS}
    for name, path in package_modules().items():
        top = {n.name for n in parse(path).body if isinstance(n, ast.FunctionDef)}
        if name.startswith("patches.cli.") and top & {"main", "cli"}:
            names.add(name)
    return names


def test_no_library_module_imports_an_entry_point():
    """patches.cli is the top layer: nothing outside it imports it (the drivers aside), and inside it only the
    drivers import another entry point's module; nothing imports a root entry script."""
    modules = package_modules()
    entries = entry_modules()
    known = set(modules) | entries
    offenders = []
    for name, path in modules.items():
        if name.startswith(ENTRY_POINT_DRIVERS):
            continue
        deps = imported_modules(parse(path), name, known) - {name}
        in_cli = name.startswith("patches.cli.")
        upward = {d for d in deps if d in entries or (d.startswith("patches.cli.") and not in_cli)}
        offenders += [f"{rel(path)} imports {dep}" for dep in sorted(upward)]
    assert not offenders, "; ".join(offenders)


# --- the repository's files --------------------------------------------------------------------------------------

def test_the_root_holds_only_the_entry_scripts_and_videomae_module_names():
    present = {p.name for p in ROOT.glob("*.py")}
    expected = ROOT_SCRIPTS | ROOT_MODULES
    assert present == expected, (f"not allowed at the root: {sorted(present - expected)}; "
                                 f"missing: {sorted(expected - present)}")


SHIMS = sorted([*ROOT_SCRIPTS, *ROOT_MODULES]) + sorted(rel(p) for p in ROOT.glob("scripts/*.py"))


@pytest.mark.parametrize("shim", SHIMS)
def test_each_shim_imports_what_it_names(shim):
    """Each root and scripts/ file runs up to its ``if __name__ == "__main__"`` line: every name it imports exists."""
    runpy.run_path(str(ROOT / shim), run_name="shim_under_test")


def console_scripts() -> dict[str, str]:
    """pyproject.toml's ``[project.scripts]``: command -> ``module:function`` (read by hand: tomllib is 3.11+)."""
    table = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', table, re.M))


def test_each_console_script_names_a_function_of_the_package():
    scripts = console_scripts()
    assert {"patches-pretrain", "patches-finetune", "patches-demo"} <= set(scripts)
    for command, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(import_module(module), function, None)), f"{command} = {target}: no such function"


@pytest.mark.slow
def test_each_console_script_shows_its_help_as_pip_runs_it():
    """pip's wrapper is ``sys.exit(function())``: ``--help`` exits 0, with cpu_memory imported before torch."""
    def show_help(command: str, target: str) -> subprocess.CompletedProcess:
        module, _, function = target.partition(":")
        code = (f"import sys; sys.argv = [{command!r}, '--help']; from {module} import {function}; "
                f"sys.exit({function}())")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    scripts = console_scripts()
    with ThreadPoolExecutor(4) as pool:  # a fresh interpreter each, 4 at a time: mostly the imports' time
        shown = dict(zip(scripts, pool.map(show_help, scripts, scripts.values())))
    for command, done in shown.items():
        assert done.returncode == 0 and "usage:" in done.stdout, f"{command}: {done.stderr[-2000:]}"
        assert "imported after torch" not in done.stderr, f"{command}: {done.stderr[-2000:]}"


def sys_path_edits(tree: ast.Module) -> list[int]:
    """Lines that touch ``sys.path`` (any use: insert, append, assignment) or call ``site.addsitedir``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in {("sys", "path"), ("site", "addsitedir")}:
                lines.append(node.lineno)
    return sorted(set(lines))


def test_sys_path_edits_are_found():
    assert sys_path_edits(ast.parse("import sys\nsys.path.insert(0, 'x')\nprint(sys.argv)\nsys.path = []\n")) == [2, 4]


def test_nothing_patches_sys_path():
    offenders = []
    paths = [*PACKAGE.rglob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("*.py")]
    for path in sorted(paths):
        if path != Path(__file__).resolve():
            offenders += [f"{rel(path)}:{line}" for line in sys_path_edits(parse(path))]
    assert not offenders, "sys.path edited at " + ", ".join(offenders)


# --- sizes -------------------------------------------------------------------------------------------------------

def test_no_module_over_400_lines():
    sizes = {rel(path): len(path.read_text().splitlines()) for path in package_modules().values()}
    offenders = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not offenders, f"modules over {MAX_MODULE_LINES} lines: {offenders}"


def is_flag_statement(node: ast.AST) -> bool:
    """``parser.add_argument(...)``, ``group = parser.add_argument_group(...)`` and the like."""
    value = node.value if isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign)) else None
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
            and value.func.attr in FLAG_CALLS)


def function_lengths(tree: ast.Module) -> dict[str, int]:
    """Every function's and method's length (nested ones too), by qualified name: the lines from ``def`` to its
    last line, decorators out, comments and blank lines in, less the lines of argparse flag statements
    (:data:`FLAG_CALLS`) anywhere in it, so a parser's flag list may be long but the logic around it may not."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                flag_lines = {line for n in ast.walk(child) if isinstance(n, ast.stmt) and is_flag_statement(n)
                              for line in range(n.lineno, n.end_lineno + 1)}
                lengths[f"{prefix}{child.name}"] = child.end_lineno - child.lineno + 1 - len(flag_lines)
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return lengths


def test_function_lengths_count_nested_functions_and_leave_out_flag_lists():
    source = ("def parser():\n    p = argparse.ArgumentParser()\n    g = p.add_argument_group('x')\n"
              "    g.add_argument('--a',\n                   type=int)\n    return p\n\n"
              "class C:\n    def m(self):\n        def inner():\n            pass\n        return inner\n")
    assert function_lengths(ast.parse(source)) == {"parser": 3, "C.m": 4, "C.m.inner": 2}


def test_no_function_over_50_lines():
    offenders = [f"{rel(path)}:{name} ({n} lines)" for path in package_modules().values()
                 for name, n in function_lengths(parse(path)).items() if n > MAX_FUNCTION_LINES]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (flag lists aside): " + "; ".join(offenders)


# --- exits and args ----------------------------------------------------------------------------------------------

def is_exit(node: ast.AST) -> bool:
    """``raise SystemExit``, ``SystemExit(...)``, ``sys.exit(...)``, ``exit()``/``quit()``, ``os._exit(...)`` or a
    class deriving from SystemExit. Catching SystemExit is not an exit."""
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Name):
        return node.exc.id == "SystemExit"
    if isinstance(node, ast.ClassDef):
        return any(isinstance(b, ast.Name) and b.id == "SystemExit" for b in node.bases)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in {"SystemExit", "exit", "quit"}
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and (func.value.id, func.attr) in {("sys", "exit"), ("os", "_exit")})


def is_main_guard(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def exits_outside(tree: ast.Module, allowed_functions: set[str]) -> list[int]:
    """Lines that end the process outside the allowed module-level functions (anywhere inside them, nested
    functions included) and outside ``if __name__ == "__main__":`` blocks."""
    lines = []
    for top in tree.body:
        if is_main_guard(top) or (isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))
                                  and top.name in allowed_functions):
            continue
        lines += [n.lineno for n in ast.walk(top) if is_exit(n)]
    return sorted(set(lines))


def test_exits_outside_finds_each_form_and_allows_main_and_the_guard():
    source = ("import sys\ndef main():\n    sys.exit(2)\ndef helper():\n    raise SystemExit(1)\n"
              "class Stop(SystemExit):\n    pass\ndef other():\n    try:\n        pass\n    except SystemExit:\n"
              "        os._exit(3)\nif __name__ == '__main__':\n    raise SystemExit(main())\n")
    assert exits_outside(ast.parse(source), {"main"}) == [5, 6, 12]


def test_only_entry_points_exit():
    offenders = []
    for name, path in package_modules().items():
        allowed = set().union(*(fns for prefix, fns in EXIT_FUNCTIONS.items()
                                if name == prefix or (prefix.endswith(".") and name.startswith(prefix))))
        offenders += [f"{rel(path)}:{line}" for line in exits_outside(parse(path), allowed)]
    assert not offenders, "SystemExit / sys.exit outside the entry points at " + ", ".join(offenders)


def names_args(node: ast.AST) -> bool:
    """``args`` or ``<something>.args``."""
    return ((isinstance(node, ast.Name) and node.id == "args")
            or (isinstance(node, ast.Attribute) and node.attr == "args"))


def args_writes(tree: ast.Module) -> list[int]:
    """Lines that write into a parsed ``args``: ``args.x = ...`` (also augmented, annotated, subscripted, deleted),
    ``setattr(args, ...)``/``delattr(args, ...)``, ``vars(args)[...] = ...``, ``vars(args).update(...)`` and
    the same through ``args.__dict__``."""
    lines = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Attribute) and names_args(target.value):
                lines.append(node.lineno)
            if isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "vars":
                lines += [node.lineno] if target.args and names_args(target.args[0]) else []
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id in {"setattr", "delattr"} and node.args
                    and names_args(node.args[0])):
                lines.append(node.lineno)
            if isinstance(func, ast.Attribute) and func.attr in {"update", "setdefault", "pop"}:
                owner = func.value
                if isinstance(owner, ast.Attribute) and owner.attr == "__dict__" and names_args(owner.value):
                    lines.append(node.lineno)
                if (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "vars"
                        and owner.args and names_args(owner.args[0])):
                    lines.append(node.lineno)
    return sorted(set(lines))


def test_args_writes_are_found_and_reads_are_not():
    source = ("args.amp = True\nx = args.amp\nsetattr(args, 'lr', 1)\nself.args.grid[0] = 2\nvars(args)['a'] = 1\n"
              "vars(args).update(b=2)\nargs.__dict__.update(c=3)\nargs.lr *= 2\ndel args.x\nnamespace.y = 1\n"
              "print(getattr(args, 'z'))\n")
    assert args_writes(ast.parse(source)) == [1, 3, 4, 5, 6, 7, 8, 9]


def test_nothing_in_the_package_writes_into_args():
    """argparse's own parser construction (custom Actions) writes to its ``namespace`` and is not caught."""
    offenders = [f"{rel(path)}:{line}" for path in package_modules().values() for line in args_writes(parse(path))]
    assert not offenders, "writes into args at " + ", ".join(offenders)


# --- test tiers --------------------------------------------------------------------------------------------------

def spawning_functions(tree: ast.Module, spawning_names: set[str]) -> set[str]:
    """The module-level functions of ``tree`` that start a process: they use ``subprocess``, name
    ``sys.executable``, or name (call, or take as a fixture argument) one of ``spawning_names`` (``run`` or
    ``module.run``) or another spawning function of the module, at any depth."""
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def used_names(fn: ast.AST) -> set[str]:
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        return names | {a.arg for a in fn.args.args}

    def direct(fn: ast.AST) -> bool:
        for n in ast.walk(fn):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                if n.value.id == "subprocess" or f"{n.value.id}.{n.attr}" in {"sys.executable", *spawning_names}:
                    return True
        return bool(used_names(fn) & spawning_names)

    spawning = {name for name, fn in functions.items() if direct(fn)}
    grew = True
    while grew:
        more = {name for name, fn in functions.items() if name not in spawning and used_names(fn) & spawning}
        spawning |= more
        grew = bool(more)
    return spawning


def is_marked_slow(fn: ast.FunctionDef, module: ast.Module) -> bool:
    marks = [*fn.decorator_list, *(n.value for n in module.body if isinstance(n, ast.Assign)
                                   and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets))]
    return any("mark.slow" in ast.unparse(m) for m in marks)


def test_spawning_functions_follow_helpers_and_fixtures():
    source = ("import subprocess, pytest\nfrom launch_helpers import PRETRAIN, run\n"
              "def helper():\n    return subprocess.run(['x'])\n@pytest.fixture\ndef made():\n    return helper()\n"
              "def test_a(made):\n    pass\ndef test_b():\n    run('x.py', PRETRAIN)\n"
              "def test_c():\n    print(PRETRAIN)\ndef test_d():\n    lh.run_and_signal('x.py')\n")
    assert spawning_functions(ast.parse(source), {"run", "lh.run_and_signal"}) == {"helper", "made", "test_a",
                                                                                    "test_b", "test_d"}


def test_tests_that_start_a_process_are_marked_slow():
    """The fast tier (``pytest -m "not slow"``) runs in process: a test that starts one (a script, torchrun, a
    probe; itself, through tests/launch_helpers.py, or through a fixture) is marked ``slow``."""
    tests = ROOT / "tests"
    helpers = spawning_functions(parse(tests / "launch_helpers.py"), set())
    fixtures = spawning_functions(parse(tests / "conftest.py"), helpers)
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        tree = parse(path)
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                    and n.module == "launch_helpers" for a in n.names if a.name in helpers}
        aliases = {a.asname or a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names
                   if a.name == "launch_helpers"}
        spawning = spawning_functions(tree, imported | {f"{m}.{h}" for m in aliases for h in helpers} | fixtures)
        offenders += [f"{rel(path)}::{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef)
                      and n.name.startswith("test_") and n.name in spawning and not is_marked_slow(n, tree)]
        # an autouse fixture that starts processes would start them in the fast tier too
        offenders += [f"{rel(path)}::{n.name} (an autouse fixture)" for n in tree.body
                      if isinstance(n, ast.FunctionDef) and n.name in spawning
                      and any("autouse=True" in ast.unparse(d) for d in n.decorator_list)]
    assert not offenders, "start a process but are not marked slow: " + ", ".join(offenders)

