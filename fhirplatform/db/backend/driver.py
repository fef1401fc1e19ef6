"""The driver module as Django's PostgreSQL backend sees it (`DatabaseWrapper.Database`).

Django opens a connection with `self.Database.connect(**params)` and maps errors through
`self.Database.<ErrorName>`. This is psycopg for everything, except that `connect` makes a
BeginWithConnection (connection.py).
"""

from typing import Any

import psycopg

from fhirplatform.db.backend.connection import BeginWithConnection


class BeginWithDriver:
    connect = staticmethod(BeginWithConnection.connect)

    def __getattr__(self, name: str) -> Any:
        return getattr(psycopg, name)
