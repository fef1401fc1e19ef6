"""The platform's database ENGINE: `fhirplatform.db.backend` (see base.py)."""
