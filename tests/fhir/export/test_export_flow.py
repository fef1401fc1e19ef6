"""A bulk export end to end on a real worker: the counts match the store, and _since,
_type, _typeFilter and patient narrow it."""

from tests.fhir.export.export_support import ExportWorld, exported, run_export


def test_system_export_holds_every_stored_resource(live: ExportWorld) -> None:
    token = live.token()
    manifest = run_export(live, token)
    assert manifest["requiresAccessToken"] is True
    by_type = exported(manifest, token)
    assert {t: len(rs) for t, rs in by_type.items()} == live.stored_counts()
