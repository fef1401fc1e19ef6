"""Build fhirplatform/fhir/compartment-patient.json from the specification's
CompartmentDefinition for the Patient compartment.

Reads CompartmentDefinition-patient.json of npm hl7.fhir.r4.examples@4.0.1 (unpacked at
.data/r4-examples, or pass the directory) and writes {resource type: [param codes]}: the
search parameters whose Patient targets put a resource of that type in a patient's
compartment. Types the definition lists without parameters are never in it and are left out.

    python -m scripts.build_compartments [DIR]

If DIR does not exist, the package is fetched with `npm pack` into a temporary folder.
"""

import json
import sys
from pathlib import Path
from typing import Any

from scripts.build_search_registry import DEFAULT_SOURCE, ROOT, per_type_write
from scripts.fhir_packages import R4_EXAMPLES, npm_package

OUTPUT = ROOT / "fhirplatform" / "fhir" / "compartment-patient.json"
DEFINITION = "CompartmentDefinition-patient.json"


def build(source: Path) -> dict[str, list[str]]:
    definition: dict[str, Any] = json.loads((source / DEFINITION).read_text())
    if definition.get("code") != "Patient":
        raise SystemExit(f"{DEFINITION} defines the {definition.get('code')} compartment")
    compartment = {
        entry["code"]: sorted(set(entry["param"]))
        for entry in definition.get("resource", [])
        if entry.get("param")
    }
    return dict(sorted(compartment.items()))


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    if not (source / DEFINITION).is_file():
        source = npm_package(R4_EXAMPLES)
    per_type_write(output=OUTPUT, table=build(source))


if __name__ == "__main__":
    main()
