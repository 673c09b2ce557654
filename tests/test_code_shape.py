"""The package stays readable top to bottom: no module over 450 lines, no function over 80, no line over 120
columns (the limits the one-path refactor brought the package within)."""

import ast
from pathlib import Path

import dglm

PACKAGE = Path(dglm.__file__).parent


def test_modules_functions_and_lines_stay_within_their_limits():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(PACKAGE.parent)
        if len(source.splitlines()) > 450:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
        too_long += [f"{name}:{number}: {len(line)} columns" for number, line in enumerate(source.splitlines(), 1)
                     if len(line) > 120]
    assert not too_long, "\n".join(too_long)
