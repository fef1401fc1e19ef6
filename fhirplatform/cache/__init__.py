"""The cache store: consent-aware response and semantic entries in Redis.

Correct before fast. Every entry remembers the generation tokens it was filled under (the
patient's, the consent's, the policy's, a type's ...); a committed change sets fresh random
tokens (generations.py), so the entries filled before it are unreachable at once, and a
Celery purge deletes them later (tasks.py). A fill is refused when anything in the tenant
changed since its lookup (the epoch token), so an entry is never stored under tokens
newer than the data it holds. Redis down: every call answers "bypass" after one timeout,
and the caller decides from PostgreSQL.

Modules: keys.py (key names), link.py (client, scripts, breaker), lua.py (the scripts),
generations.py, store.py (cache_key, cache_lookup, cache_fill), purge.py, stats.py,
type_classes.py and rules.py (TTLs per resource type), models/services/selectors/admin.
"""
