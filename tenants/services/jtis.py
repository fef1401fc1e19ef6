"""Spent private_key_jwt assertion ids: the durable record of replay protection.

A jti is spent once per client until its assertion expires. PostgreSQL keeps that
record so a Redis restart (or FLUSHALL) cannot reopen a replay window; Redis is only
the fast first check (tenants/assertions.py).
"""

import hashlib
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.models import ApiClient, UsedJti


def jti_hash(jti: str) -> str:
    """What is stored of a jti, in PostgreSQL and in Redis: a fixed-size digest."""
    return hashlib.sha256(jti.encode()).hexdigest()


def jti_spend(*, client: ApiClient, jti: str, expires_at: datetime) -> bool:
    """Record the jti as used until `expires_at`; False when it is already spent.

    The unique (client, jti) row decides a race: of two requests spending the same
    jti at once, the second waits for the first's insert and gets False. A row that
    outlived its expiry (not purged yet) no longer guards anything and is reused.
    """
    digest = jti_hash(jti)
    try:
        with transaction.atomic():
            UsedJti.objects.create(client=client, jti_hash=digest, expires_at=expires_at)
        return True
    except IntegrityError:
        reused = UsedJti.objects.filter(
            client=client, jti_hash=digest, expires_at__lt=timezone.now()
        ).update(expires_at=expires_at)
        return reused == 1


def jtis_purge_expired() -> int:
    """Delete used-jti rows whose assertions have expired: they can no longer be replayed."""
    deleted, _ = UsedJti.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted
