"""Build fhirplatform/fhir/r4b_differences.json: the R4 resource types whose R4B definition
would refuse valid R4 content.

Validation uses the fhir.resources R4B models (docs/fhir.md). For most types R4B is R4
with additions, but for some it removed or renamed an element, made one required, made a
repeating one single, or narrowed its types: valid R4 is then refused. This compares the
StructureDefinitions of the two releases (npm hl7.fhir.r4.examples@4.0.1 and
hl7.fhir.r4b.core@4.3.0), element by element of each resource type, and lists every type
where an R4 element is

- missing in R4B (removed or renamed),
- required in R4B (min 1) where R4 has min 0,
- single in R4B where R4 lets it repeat, or
- allowed a type in R4 that R4B does not allow,

with what differs. Those types are validated by R4's structure instead (the same path as
the types R4B removed).

    python scripts/build_r4b_differences.py [R4_DIR R4B_DIR]

Each DIR is an unpacked package; missing ones are fetched with `npm pack`.
"""

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.fhir_packages import R4_EXAMPLES, R4B_CORE, npm_package

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "fhirplatform" / "fhir" / "r4b_differences.json"

Elements = dict[str, dict[str, Any]]


def _resource_definitions(folder: Path) -> dict[str, Elements]:
    """Each resource type's elements (path: min, max, type codes), from its core
    StructureDefinition's snapshot."""
    types: dict[str, Elements] = {}
    for file in sorted(folder.glob("StructureDefinition-*.json")):
        definition = json.loads(file.read_text())
        if (
            definition.get("kind") != "resource"
            or definition.get("derivation") != "specialization"
            or definition.get("abstract")
        ):
            continue
        elements: Elements = {}
        for element in definition["snapshot"]["element"]:
            elements[element["path"]] = {
                "min": element.get("min", 0),
                "max": element.get("max", "*"),
                "types": sorted({t["code"] for t in element.get("type", [])}),
            }
        types[definition["type"]] = elements
    return types


def _repeats(max_: str) -> bool:
    return max_ == "*" or (max_.isdigit() and int(max_) > 1)


def _differences(r4: Elements, r4b: Elements) -> list[str]:
    found = []
    for path, element in r4.items():
        other = r4b.get(path)
        if other is None:
            found.append(f"{path}: not in R4B")
            continue
        if other["min"] > element["min"]:
            found.append(f"{path}: required in R4B")
        if _repeats(element["max"]) and not _repeats(other["max"]):
            found.append(f"{path}: single in R4B")
        narrowed = sorted(set(element["types"]) - set(other["types"]))
        if narrowed:
            found.append(f"{path}: R4B does not allow {', '.join(narrowed)}")
    return found


def main() -> None:
    if len(sys.argv) >= 3:
        folders = [Path(sys.argv[1]), Path(sys.argv[2])]
    else:
        folders = [npm_package(R4_EXAMPLES), npm_package(R4B_CORE)]
    r4, r4b = (_resource_definitions(folder) for folder in folders)
    differing = {
        resource_type: differences
        for resource_type in sorted(r4.keys() & r4b.keys())
        if (differences := _differences(r4[resource_type], r4b[resource_type]))
    }
    OUTPUT.write_text(json.dumps(differing, indent=1, sort_keys=True) + "\n")
    print(f"{len(differing)} of {len(r4.keys() & r4b.keys())} shared types differ: {OUTPUT}")


if __name__ == "__main__":
    main()
