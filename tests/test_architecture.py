"""The shape of the code: no import cycle, services that share only `contracts/` and `services/shared/`
(whose plumbing knows nothing of its domain), and a verification kit that knows no command."""

from __future__ import annotations

import ast
from pathlib import Path

from services.registry import SERVICES
from services.shared.settings import REPO_ROOT

PACKAGES = ("contracts", "services", "sovereign")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the project and the project's modules it imports (anywhere in it, functions too)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            named: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    named |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
                elif isinstance(node, ast.Import):
                    named |= {alias.name for alias in node.names}
            found[module_name(path)] = {name for name in named if name.split(".")[0] in PACKAGES}
    return {
        module: {name for name in named if name in found and name != module}
        for module, named in found.items()
    }


def test_no_module_imports_itself_back_through_others() -> None:
    graph = imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            assert state.get(imported) != "open", "import cycle: " + " -> ".join([*path, module, imported])
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_a_service_imports_only_contracts_the_shared_package_and_itself() -> None:
    for module, imported in imports().items():
        parts = module.split(".")
        if parts[0] != "services" or len(parts) < 3 or parts[1] == "shared":
            continue
        own = f"services.{parts[1]}"
        foreign = sorted(
            name
            for name in imported
            if name.startswith("services.") and not name.startswith((own, "services.shared"))
        )
        assert not foreign, f"{module} imports {foreign}"


def test_the_shared_plumbing_imports_nothing_of_the_shared_domain() -> None:
    """The domain may log and refuse a message through the plumbing; the plumbing knows no domain."""
    for module, imported in imports().items():
        if module.startswith("services.shared") and not module.startswith("services.shared.domain"):
            domain = sorted(name for name in imported if name.startswith("services.shared.domain"))
            assert not domain, f"{module} imports {domain}"


def test_the_verification_kit_imports_no_command() -> None:
    """The tests, the demo and the benchmark import the kit; the commands may use it, never the reverse."""
    for module, imported in imports().items():
        if module.startswith("sovereign.verification"):
            commands = sorted(
                name
                for name in imported
                if name.startswith("sovereign") and not name.startswith("sovereign.verification")
            )
            assert not commands, f"{module} imports {commands}"


def test_every_service_package_is_registered() -> None:
    packages = {path.parent.name.replace("_", "-") for path in (REPO_ROOT / "services").glob("*/app.py")}
    assert packages == set(SERVICES)
