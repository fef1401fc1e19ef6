"""Database plumbing under every app: the PostgreSQL backend that switches schemas per
transaction (backend/), statements that name their schema instead (named.py), re-running
a transaction PostgreSQL aborted as a deadlock victim (transactions.py), and the answer a
database fault gets (faults.py)."""
