"""The FHIR specification's npm packages (hl7.fhir.r4.examples, hl7.fhir.r4b.core), fetched
with `npm pack` and unpacked: for the scripts that build data from them and the tests
that load the specification's examples."""

import subprocess
import tarfile
import tempfile
from pathlib import Path

R4_EXAMPLES = "hl7.fhir.r4.examples@4.0.1"
R4B_CORE = "hl7.fhir.r4b.core@4.3.0"


def npm_package(package: str, into: Path | None = None) -> Path:
    """The package's unpacked `package` folder: under `into` (fetched there once and kept),
    or in a new temporary folder."""
    folder = into or Path(tempfile.mkdtemp(prefix="fhir-package-"))
    unpacked = folder / "package"
    if (unpacked / "package.json").is_file():
        return unpacked
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", "--silent", package], cwd=folder, check=True, capture_output=True
    )
    archive = max(folder.glob("*.tgz"), key=lambda path: path.stat().st_mtime)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return unpacked
