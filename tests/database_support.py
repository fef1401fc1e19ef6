"""Real database plumbing for the pooler and fault tests: a PgBouncer of their own, and
tenants whose rate plan never refuses (the tests measure the database, not the plan)."""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from scripts.loopback import free_port
from tenants.scopes import scopes_parse
from tenants.services import client_create, rate_plan_count_only, tenant_create, token_issue

# Where Debian's package puts it; `make test` installs the package when it is missing.
_DEBIAN_BINARY = "/usr/sbin/pgbouncer"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        _DEBIAN_BINARY if os.access(_DEBIAN_BINARY, os.X_OK) else None
    )
    if found is None:
        pytest.fail(
            "pgbouncer is not installed: `make test` installs it "
            "(DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer)"
        )
    return found


def _ini(*, upstream: str, folder: Path, port: int, pool_mode: str, pool_size: int) -> str:
    params = conninfo_to_dict(upstream)
    database = params["dbname"]
    # host is a name, an address or a socket folder: PgBouncer takes all three.
    server = " ".join(
        f"{key}={params[key]}" for key in ("host", "port", "user", "password") if params.get(key)
    )
    return f"""[databases]
{database} = {server} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = {pool_mode}
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = {pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""


@contextmanager
def pgbouncer(
    *, upstream: str, pool_mode: str = "transaction", pool_size: int = 4
) -> Iterator[str]:
    """PgBouncer in front of `upstream` (a postgresql:// URL); yields the URL to use instead.

    Its pool holds at most `pool_size` server connections, so the clients really share them.
    """
    binary = pgbouncer_binary()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = free_port()
    params = conninfo_to_dict(upstream)
    user = str(params.get("user") or "postgres")
    (folder / "pgbouncer.ini").write_text(
        _ini(upstream=upstream, folder=folder, port=port, pool_mode=pool_mode, pool_size=pool_size)
    )
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root: it runs as the PostgreSQL system user.
        account = pwd.getpwnam("postgres")
        for path in [folder, *folder.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"postgresql://{user}@127.0.0.1:{port}/{params['dbname']}"
    try:
        _wait_for(url, process, folder)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(url: str, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file = folder / "pgbouncer.log"
            log = log_file.read_text() if log_file.exists() else ""
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"pgbouncer exited: {stderr}{log}")
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error:
            time.sleep(0.2)
    raise RuntimeError("pgbouncer did not come up")


def unthrottled_tenant(*, slug: str, scopes: str = "system/Patient.cruds") -> str:
    """A committed tenant on a count-only plan and a client's token for it."""
    plan = rate_plan_count_only(name="database-tests", description="Database tests: never refuse")
    tenant_create(slug=slug, name=f"Database test {slug}", plan_name=plan.name)
    grant = client_create(
        partner_name=f"Database test {slug}",
        tenant_slugs=[slug],
        scopes=scopes,
        plan_name=plan.name,
    ).grants[0]
    return token_issue(
        grant=grant, scopes=scopes_parse(grant.scopes), auth_method="test"
    ).access_token
