"""A private PostgreSQL cluster for the tests: Debian's server binaries, a temp data directory,
a free loopback port, trust authentication on 127.0.0.1 only, and nothing kept afterwards.

:class:`PostgresCluster` runs ``initdb`` and ``pg_ctl`` (as the ``postgres`` system user when
the suite runs as root, since PostgreSQL refuses to run as root), makes one fresh database
per test (``CREATE DATABASE … TEMPLATE template0`` takes a few ms), and can be stopped and
started again on the same port (a database restart while icsfeed serves).
Durability is switched off (``fsync=off``): the cluster is thrown away after the run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from servers import free_port

#: the system user the server runs as when the tests run as root (Debian's package makes it)
SYSTEM_USER = "postgres"


def server_bin() -> Path | None:
    """The newest installed server's bin directory (``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` on 127.0.0.1:<free port>; ``url(db)`` for SQLAlchemy."""

    def __init__(self, base: Path | None = None, *, durable: bool = False) -> None:
        """``durable``: PostgreSQL's own fsync and commit settings (the benchmarks), instead
        of the tests' fsync=off."""
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server installed (Debian package postgresql)")
        self.bin = bindir
        # its own folder under /tmp, not pytest's: the server's user must be able to reach it
        self.base = Path(base or tempfile.mkdtemp(prefix="icsfeed-pg-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.port = free_port()
        self._as_user = os.geteuid() == 0
        self._created = 0
        self.durable = durable

    # --- lifecycle -------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_user:
            cmd = ["runuser", "-u", SYSTEM_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def init(self) -> PostgresCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if self._as_user:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chmod(self.base, 0o755)
            for path in (self.base, self.sockdir):
                os.chown(path, user.pw_uid, user.pw_gid)
        done = self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                + ("" if self.durable else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
                + "max_connections = 200\nshared_buffers = 128MB\n")
        return self

    def start(self) -> PostgresCluster:
        done = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}\n{log}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status").returncode == 0

    def destroy(self) -> None:
        if self.datadir.exists() and self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- databases ---------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for psycopg 3 (the driver of the ``postgres`` extra)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its name."""
        self._created += 1
        name = f"{prefix}_{os.getpid()}_{self._created}_{int(time.time() * 1000) % 100000}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\'')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
