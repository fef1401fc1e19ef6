"""Imports run one way: down from the FHIR API to limits, then tenants, then the project's
base modules. A lower layer that imports a higher one is how a rule ends up in two places."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Layer → the packages it must never import (each is above it).
FORBIDDEN_ABOVE = {
    "tenants": ("fhirplatform.fhir", "fhirplatform.limits", "fhirplatform.demo"),
    "fhirplatform/limits": ("fhirplatform.fhir", "fhirplatform.demo"),
    # The cache store knows generations and entries, never what consent or limits decide.
    "fhirplatform/cache": ("consent", "fhirplatform.limits", "fhirplatform.demo"),
}
# The project package's base modules (and packages) sit under every app.
BASE_MODULES = (
    "context.py",
    "db",
    "env.py",
    "errors.py",
    "metrics.py",
    "redis_clients.py",
    "resource_types.py",
    "schemas.py",
    "task_envelope.py",
)


class _ImportScan(ast.NodeVisitor):
    """Absolute imports a module makes at run time (type-checking-only imports are not)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.extend(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            self.names.append(node.module)
            self.names.extend(f"{node.module}.{alias.name}" for alias in node.names)


def _imports(path: Path) -> list[str]:
    scan = _ImportScan()
    scan.visit(ast.parse(path.read_text(), filename=str(path)))
    return scan.names


def _modules(folder: str) -> list[Path]:
    return [p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts]


def _upward(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            name
            for name in _imports(path)
            if any(name == above or name.startswith(above + ".") for above in forbidden)
        }
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_ABOVE))
def test_a_layer_never_imports_the_layers_above_it(layer):
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in _modules(layer)
        if (found := _upward(path, FORBIDDEN_ABOVE[layer]))
    }
    assert offenders == {}


@pytest.mark.parametrize("module", BASE_MODULES)
def test_the_base_modules_import_no_app(module):
    path = ROOT / "fhirplatform" / module
    apps = ("tenants", "fhirplatform.fhir", "fhirplatform.limits", "fhirplatform.demo")
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    assert {str(f.relative_to(ROOT)): _upward(f, apps) for f in files if _upward(f, apps)} == {}


def test_the_check_sees_an_upward_import(tmp_path):
    # The scan itself must catch the shapes an upward import takes.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import fhirplatform.fhir.models\n"
        "from fhirplatform.fhir import views\n"
        "from fhirplatform import limits\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from fhirplatform.fhir.search import types\n"
        "def later():\n"
        "    from fhirplatform.limits.engine import limit_admit\n"
    )
    found = _upward(sample, ("fhirplatform.fhir", "fhirplatform.limits"))
    assert found == [
        "fhirplatform.fhir",
        "fhirplatform.fhir.models",
        "fhirplatform.fhir.views",
        "fhirplatform.limits",
        "fhirplatform.limits.engine",
        "fhirplatform.limits.engine.limit_admit",
    ]
