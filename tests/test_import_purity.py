import ast
import subprocess
import sys
from pathlib import Path


def test_import_grader_loads_no_framework():
    """The domain core stays pure: importing every grader module pulls in no torch, onnxruntime or fastapi."""
    code = (
        "import sys, grader, grader.measure, grader.colour, grader.defect, grader.rules, grader.flags, grader.standards, "
        "grader.pipeline, grader.records, datasets.synthetic\n"
        "bad = sorted({'torch', 'onnxruntime', 'fastapi', 'sqlalchemy', 'starlette'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ layers: every package imports only those below it

ROOT = Path(__file__).resolve().parents[1]

#: each package, bottom to top, and the packages it may import (bench/, tests/ and docs/ may import anything)
LAYERS: dict[str, frozenset[str]] = {
    "grader": frozenset(),
    "inference": frozenset({"grader"}),
    "store": frozenset({"grader"}),
    "datasets": frozenset({"grader", "inference", "store"}),
    "training": frozenset({"grader", "inference", "store", "datasets"}),
    "service": frozenset({"grader", "inference", "store", "datasets"}),
    "cli": frozenset({"grader", "inference", "store", "datasets", "training", "service"}),
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: a module's entry point, run only as a script, never on import."""
    t = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(t, ast.Compare) and getattr(t.left, "id", None) == "__name__"


def imports(path: Path, root: Path = ROOT, *, top_only: bool = False, entry_points: bool = True) -> list[tuple[int, str]]:
    """(line, module) for every import in a file: absolute names, relative ones resolved, and
    ``importlib.import_module`` with a literal (an f-string: its literal start). ``top_only``: only
    what runs when the module is imported (no function bodies, no ``if TYPE_CHECKING:`` block), and
    ``from package import name`` names the submodule when ``name`` is one."""
    module = _module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if top_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if not entry_points and _is_main_block(node):
            return
        if top_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
            )
            for a in node.names:
                sub = f"{base}.{a.name}"
                as_module = (root / sub.replace(".", "/")).with_suffix(".py").is_file() or (
                    root / sub.replace(".", "/") / "__init__.py"
                ).is_file()
                found.append((node.lineno, sub if as_module else base))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
        ):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.append((node.lineno, str(arg.values[0].value).rstrip(".")))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def layer_violations(root: Path = ROOT) -> list[str]:
    """file:line of every import of a package that is not below the importing one."""
    bad = []
    for pkg, allowed in LAYERS.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for line, name in imports(path, root):
                top = name.split(".")[0]
                if top in LAYERS and top != pkg and top not in allowed:
                    bad.append(f"{path.relative_to(root)}:{line}: {pkg} imports {name} ({top} is not below {pkg})")
    return bad


def import_cycles(root: Path = ROOT, top_only: bool = True) -> list[list[str]]:
    """The cycles among each package's modules, from what each module imports when it is imported
    (``top_only=False``: and inside its functions too; a script's ``__main__`` block is left out)."""
    cycles = []
    for pkg in LAYERS:
        graph: dict[str, set[str]] = {}
        for path in sorted((root / pkg).rglob("*.py")):
            module = _module_name(path, root)
            found = imports(path, root, top_only=top_only, entry_points=False)
            graph[module] = {name for _, name in found if name.split(".")[0] == pkg and name != module}
        cycles += _strongly_connected(graph)
    return cycles


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan: the groups of modules that import each other, directly or round a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_every_package_imports_only_the_packages_below_it():
    """grader < inference, store < datasets < training < service < cli: nothing imports upwards or
    sideways (imports inside functions count too); nothing imports cli."""
    assert not layer_violations(), "\n".join(layer_violations())


def test_no_import_cycles_inside_a_package():
    """Not at import time, and not through imports inside functions either (a script's
    ``if __name__ == "__main__":`` entry point aside)."""
    for top_only in (True, False):
        cycles = import_cycles(top_only=top_only)
        assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_core_imports_its_own_modules_at_the_top():
    """An import of grader inside a grader function would hide a cycle from the check above."""
    inside = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted((ROOT / "grader").rglob("*.py"))
        for line, name in sorted(set(imports(path)) - set(imports(path, top_only=True)))
        if name.split(".")[0] == "grader"
    ]
    assert not inside, "\n".join(inside)


def test_the_layer_checks_catch_a_backward_import_and_a_cycle(tmp_path):
    """The checks themselves: a planted backward import is named by file and line, a planted cycle by its modules."""
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "grader" / "a.py").write_text("import math\n\n\ndef f():\n    from service.app import create_app\n")
    (tmp_path / "store" / "b.py").write_text("from .c import x\n")
    (tmp_path / "store" / "c.py").write_text("from store import b\nx = 1\n")
    (tmp_path / "training" / "d.py").write_text("import importlib\nimportlib.import_module(f'cli.{1}')\n")
    (tmp_path / "service" / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service import f\n")
    (tmp_path / "service" / "f.py").write_text("from service import e\n")
    bad = layer_violations(tmp_path)
    assert bad == [
        "grader/a.py:5: grader imports service.app (service is not below grader)",
        "training/d.py:2: training imports cli (cli is not below training)",
    ], bad
    assert import_cycles(tmp_path) == [["store.b", "store.c"]]  # a TYPE_CHECKING import is no cycle
