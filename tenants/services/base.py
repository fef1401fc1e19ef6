"""What every tenants service shares: the refusal type and the 'leave as it is' marker."""

from enum import Enum
from typing import Any

from django.db import models


class ProvisioningError(ValueError):
    """Bad input to a tenants service; nothing was changed."""


class Unchanged(Enum):
    """An update argument the caller leaves as it is. Not None: None is a real value for
    some fields (a client's JWKS, a client-wide plan)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


def fields_assign(instance: models.Model, **values: Any) -> list[str]:
    """Set the given fields on `instance`, skipping UNCHANGED ones and equal values;
    returns the names that changed (for save(update_fields=...))."""
    changed = []
    for name, value in values.items():
        if value is UNCHANGED or getattr(instance, name) == value:
            continue
        setattr(instance, name, value)
        changed.append(name)
    return changed


def name_clean(name: str, *, what: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise ProvisioningError(f"{what} must not be empty")
    return cleaned
