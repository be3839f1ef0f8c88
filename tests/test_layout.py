"""The layout shows the design: torch only in scoring/networks/, and no import circles.

Read from the source (every import, inside functions too), so a lazy import cannot hide; the
light worker's test (tests/test_light_worker.py) imports the same modules with torch absent.
"""

from __future__ import annotations

import ast

from .helpers import REPO
from .test_light_worker import NETWORK_PACKAGES


def imported_names(path) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, inside functions too; relative ones resolved."""
    package = ".".join(("scoring", *path.relative_to(REPO / "scoring").parent.parts)) \
        if path.is_relative_to(REPO / "scoring") else ""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}" if not node.module else base) for alias in node.names]
    return found


def test_no_module_outside_the_network_side_imports_torch():
    """The folders say which code may use torch: scoring/networks/ only. Nothing else imports a
    network package, not even inside a function, and only the commands (scoring/cli.py) reach
    into scoring/networks/, inside the commands that need it."""
    offenders = []
    for path in sorted([*(REPO / "scoring").rglob("*.py"), *(REPO / "plugins").rglob("*.py"),
                        *(REPO / "dags").glob("*.py")]):
        if path.is_relative_to(REPO / "scoring" / "networks"):
            continue
        for line, name in imported_names(path):
            network_package = name.split(".")[0] in NETWORK_PACKAGES
            network_side = name.startswith("scoring.networks") and path != REPO / "scoring" / "cli.py"
            if network_package or network_side:
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def scoring_modules() -> dict[str, object]:
    modules = {}
    for path in sorted((REPO / "scoring").rglob("*.py")):
        parts = ("scoring", *path.relative_to(REPO / "scoring").with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_scoring_imports_no_module_in_a_circle():
    modules = scoring_modules()
    graph = {name: sorted({target for _, imported in imported_names(path)
                           for target in modules if imported == target or imported.startswith(target + ".")
                           if target != name and not name.startswith(target + ".") and target != "scoring"})
             for name, path in modules.items()}
    circles, state = [], {}

    def visit(name, trail):
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                circles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert graph["scoring.networks.models"], "the walk found no imports: it is broken, not the code"
    assert not circles, "\n".join(circles)
