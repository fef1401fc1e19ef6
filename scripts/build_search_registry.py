"""Build fhirplatform/fhir/search/registry.json from the specification's SearchParameters.

Reads the SearchParameter-*.json files of npm hl7.fhir.r4.examples@4.0.1 (unpacked
at .data/r4-examples, or pass the directory) and writes, per resource type, every
indexable parameter: code, type, the part of the FHIRPath expression for that type,
reference targets, url and a one-line documentation.

    python scripts/build_search_registry.py [DIR]

If DIR does not exist, the package is fetched with `npm pack` into a temporary folder.
"""

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.fhir_packages import R4_EXAMPLES, npm_package

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "fhirplatform" / "fhir" / "search" / "registry.json"
DEFAULT_SOURCE = ROOT / ".data" / "r4-examples"
INDEXED_TYPES = {"token", "string", "date", "reference", "number", "quantity", "uri"}
# `_id` and `_lastUpdated` are columns of the resource row; `_text`/`_content` need full text.
COLUMN_PARAMETERS = {"_id", "_lastUpdated"}
RESOLVE_FILTER = re.compile(r"\.where\(resolve\(\) is ([A-Za-z]+)\)")


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level `|` operators."""
    parts, depth, current = [], 0, ""
    for char in expression:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [part for part in parts if part]


def component_type(component: str) -> str | None:
    match = re.match(r"^\(?([A-Z][A-Za-z]+)\b", component)
    return match.group(1) if match else None


def component_path(component: str, resource_type: str) -> dict[str, Any]:
    """One union member: its FHIRPath, the top-level element it reads, and the
    reference type filter of `.where(resolve() is X)` (which needs no resolution)."""
    resolve_type = None
    match = RESOLVE_FILTER.search(component)
    if match:
        resolve_type = match.group(1)
        component = RESOLVE_FILTER.sub("", component)
    root_match = re.match(rf"^\(?{resource_type}\.([a-z][A-Za-z0-9]*)", component)
    return {
        "expression": component,
        "root": root_match.group(1) if root_match else None,
        "resolve_type": resolve_type,
    }


def documentation_for(description: str, resource_type: str) -> str:
    """Shared parameters list one line per type; keep the line of this type."""
    for line in description.splitlines():
        match = re.match(rf"^\* \[{resource_type}\]\([^)]*\): (.*)$", line.strip())
        if match:
            return match.group(1).strip()
    return description.strip().splitlines()[0] if description.strip() else ""


def build(source: Path) -> dict[str, dict[str, Any]]:
    registry: dict[str, dict[str, Any]] = {}
    for path in sorted(source.glob("SearchParameter-*.json")):
        definition = json.loads(path.read_text())
        code, kind = definition["code"], definition["type"]
        expression = definition.get("expression")
        if kind not in INDEXED_TYPES or not expression:
            continue
        by_type: dict[str, list[dict[str, Any]]] = {}
        for component in split_union(expression):
            owner = component_type(component)
            if owner is None or owner not in definition["base"]:
                continue
            by_type.setdefault(owner, []).append(component_path(component, owner))
        for resource_type, paths in by_type.items():
            entry: dict[str, Any] = {
                "type": kind,
                "url": definition["url"],
                "documentation": documentation_for(
                    definition.get("description", ""), resource_type
                ),
                "paths": [] if code in COLUMN_PARAMETERS else paths,
            }
            if kind == "reference":
                filters = {path["resolve_type"] for path in paths}
                targets = definition.get("target", [])
                entry["targets"] = sorted(filters if None not in filters else targets)
            registry.setdefault(resource_type, {})[code] = entry
    return {name: dict(sorted(params.items())) for name, params in sorted(registry.items())}


def per_type_write(*, output: Path, table: dict[str, Any]) -> None:
    """Write {resource type: its parameters} with one line per resource type: compact, yet
    a regenerated file diffs per type."""
    lines = [
        f"{json.dumps(name)}:{json.dumps(params, sort_keys=True, separators=(',', ':'))}"
        for name, params in table.items()
    ]
    output.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    count = sum(len(params) for params in table.values())
    print(f"wrote {output.relative_to(ROOT)}: {len(table)} types, {count} parameters")


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    if not source.is_dir():
        source = npm_package(R4_EXAMPLES)
    per_type_write(output=OUTPUT, table=build(source))


if __name__ == "__main__":
    main()
