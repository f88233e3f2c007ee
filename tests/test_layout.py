"""The code's layout: every module of the packages holds one idea and stays short, and an HTTP status
is given to an error in one place only (service/errors.py: STATUS)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the packages of the project (bench/, tests/ and docs/ are not held to the limit)
PACKAGES = ("grader", "inference", "store", "datasets", "training", "service", "cli")

#: the most lines a module may have: a longer one holds more than one idea and is split by idea
MAX_LINES = 500


def _modules(root: Path = ROOT) -> list[Path]:
    return [p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]


def long_modules(root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """``path: N lines`` of every module over ``limit`` lines."""
    out = []
    for path in _modules(root):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{path.relative_to(root).as_posix()}: {n} lines")
    return out


def api_error_calls(tree: ast.AST) -> list[ast.Call]:
    """Every call of something named ``ApiError`` (a name or an attribute) in a parsed module."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None) == "ApiError":
                calls.append(node)
    return calls


def status_literal_errors(root: Path = ROOT) -> list[str]:
    """file:line of every error answer built with a status of its own: an ``ApiError(...)`` call
    with an int status as its first argument anywhere, and any ``ApiError(...)`` call outside
    service/errors.py."""
    bad = set()
    for path in _modules(root):
        rel = path.relative_to(root).as_posix()
        for call in api_error_calls(ast.parse(path.read_text(), rel)):
            literal = bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, int)
            if literal or rel != "service/errors.py":
                bad.add(f"{rel}:{call.lineno}")
    return sorted(bad)


def test_every_module_is_at_most_500_lines():
    long = long_modules()
    assert not long, f"modules over {MAX_LINES} lines (split each by idea):\n" + "\n".join(long)


def test_no_module_gives_an_error_a_status_of_its_own():
    """Routes and dependencies raise a domain error (grader/errors.py, grader/errors.py) or one
    of the service's refusals (service/errors.py); the status comes from STATUS."""
    bad = status_literal_errors()
    assert not bad, "errors built with an HTTP status outside service/errors.py: STATUS:\n" + "\n".join(bad)


def test_every_error_class_has_its_status_in_the_table():
    """No error falls through to the table's default: each class the domain or the service raises is in STATUS."""
    import grader.errors
    import service.errors
    from grader.errors import GraderError
    from service.errors import STATUS, Refused

    classes = {
        obj
        for module in (grader.errors, grader.errors, service.errors)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, GraderError) and obj.__module__ == module.__name__
    } - {GraderError, Refused}
    missing = sorted(c.__name__ for c in classes if c not in STATUS)
    assert not missing, f"error classes without a status in service/errors.py: STATUS: {missing}"


def test_the_layout_checks_catch_a_long_module_and_a_status_outside_the_table(tmp_path):
    """The checks themselves, on a planted tree: a long module is named with its length, an ApiError
    with a status is named by file and line."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "training" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "training" / "small.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "service" / "routes.py").write_text(
        "from .errors import ApiError\n\n\ndef f():\n    raise ApiError(404, 'not_found', 'no')\n"
    )
    (tmp_path / "service" / "errors.py").write_text(
        "class ApiError(Exception):\n    pass\n\n\ndef g(status):\n    return ApiError(status, 'x', 'y'), ApiError(409, 'x', 'y')\n"
    )
    assert long_modules(tmp_path) == [f"training/big.py: {MAX_LINES + 1} lines"]
    assert status_literal_errors(tmp_path) == ["service/errors.py:6", "service/routes.py:5"]
