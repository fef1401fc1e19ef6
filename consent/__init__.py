"""Patient consent: the pure decision engine (decision.py) and what it reads."""
