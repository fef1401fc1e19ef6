"""The platform's database ENGINE: `fhirplatform.db.backend` (see base.py; connection.py
sends a transaction's search_path with its BEGIN)."""
