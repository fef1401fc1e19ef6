# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
WITH_SERVICES := set -a && . .data/services.env && set +a &&

.PHONY: run test install services lint pgbouncer

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

services: $(STAMP)
	$(BIN)/python scripts/services.py

run: services
	$(WITH_SERVICES) $(BIN)/python scripts/run.py

lint: services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(WITH_SERVICES) $(BIN)/mypy .

# tests/test_pooler.py starts a PgBouncer of its own: install Debian's package when missing
# (as root, or through sudo without a password; with no stdin, as in CI).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer </dev/null
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || \
		$(APT_INSTALL) || { $(SUDO) apt-get update -q </dev/null && $(APT_INSTALL); }

test: services pgbouncer lint
	$(WITH_SERVICES) $(BIN)/python manage.py makemigrations --check --dry-run
	@# Tests use their own Redis database (15) and PostgreSQL database (test_<name>), so
	@# they never touch the data of a running `make run`.
	$(WITH_SERVICES) REDIS_URL="$${REDIS_URL%/*}/15" $(BIN)/pytest
