"""FHIR Bulk Data export (Bulk Data Access IG v2): docs/bulk-export.md."""
