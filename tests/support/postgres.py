"""A throwaway PostgreSQL server for the tests: Debian's binaries, 127.0.0.1, a free port.

The cluster's MLflow server keeps its backend store in PostgreSQL; the tests
run the same server against a real PostgreSQL instead of a SQLite file.
`make test` installs Debian's `postgresql` package when it is missing
(`make system-deps`); run directly, the tests skip with that hint.

PostgreSQL refuses to run as root: as root (a container, CI) the server runs
as the `postgres` user the Debian package creates, in a data folder it owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import free_port

USER = "postgres"
"""The superuser the tests administer the server as (trust authentication on 127.0.0.1 only)."""


INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--no-sync")
"""Trust on loopback only (the server listens nowhere else); no fsync for a throwaway store."""


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (`/usr/lib/postgresql/<major>/bin`), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def run(command: list[str], timeout: float) -> None:
    """Run a PostgreSQL program; fail with its own words if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")


@dataclass(frozen=True)
class Postgres:
    """A running server: `uri(database)` for SQLAlchemy/MLflow, `createdb` for a fresh database."""

    host: str
    port: int
    bin: Path
    run_as: list[str]

    def uri(self, database: str) -> str:
        # The driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the
        # MLflow image does not ship (it has psycopg2, as the lock).
        return f"postgresql+psycopg2://{USER}@{self.host}:{self.port}/{database}"

    def createdb(self, database: str, owner: str | None = None) -> str:
        """Create `database` (and its `owner`, a login role, if given); the URI as `USER`."""
        if owner is not None:
            self._client("createuser", "--login", owner)
        self._client("createdb", *(["--owner", owner] if owner else []), database)
        return self.uri(database)

    @property
    def _address(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", USER]

    def _client(self, program: str, *args: str) -> None:
        run([*self.run_as, str(self.bin / program), *self._address, *args], timeout=60)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """Start PostgreSQL in a fresh temporary folder; stop it (fast shutdown) and remove the folder.

    Its own folder, not pytest's: as root the server runs as `postgres`, who
    cannot enter pytest's private temporary root. Skips the test when no
    PostgreSQL is installed.
    """
    binaries = bin_dir()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (make system-deps installs Debian's package)")
    folder = Path(tempfile.mkdtemp(prefix="flywheel-postgres-"))
    data = folder / "pgdata"
    data.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    try:
        yield from _serve(binaries, data, run_as)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(binaries: Path, data: Path, run_as: list[str]) -> Iterator[Postgres]:
    port = free_port()
    log = data.parent / "postgres.log"

    def ctl(*args: str, timeout: float = 120) -> None:
        run([*run_as, str(binaries / "pg_ctl"), "-D", str(data), *args], timeout=timeout)

    run([*run_as, str(binaries / "initdb"), "-D", str(data), "-U", USER, *INITDB_OPTIONS], 180)
    # Loopback only; the socket in the data folder (not /var/run, which may not exist).
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=50"
    ctl("-l", str(log), "-o", options, "-w", "-t", "120", "start", timeout=150)
    try:
        yield Postgres(host="127.0.0.1", port=port, bin=binaries, run_as=run_as)
    finally:
        ctl("-m", "fast", "-w", "stop", timeout=60)
