"""The local Label Studio server: where it is installed, how it starts, how the labeller finds it.

Label Studio (`label-studio==1.23.2`) needs pandas 3 and Django 5.2, which
conflict with the project's lock, so `make label-studio` installs it into a
virtual environment of its own, `.label-studio/venv`, from the exact pins of
`requirements/label-studio.txt`. `FLYWHEEL_LABEL_STUDIO` names another
`label-studio` executable.

`start_label_studio` runs it on 127.0.0.1 with its SQLite database in
`<state dir>/label-studio/data`, offline (`OFFLINE_ENV`: no version check
against PyPI, no analytics, no Sentry), serving the curated images from
`LOCAL_FILES_DOCUMENT_ROOT` (the state folder by default: the prediction log
lives there). On the first start it creates the owner (`label.studio.admin`,
with a random password) and a personal access token (`ls_admin.py`, run with
Label Studio's own Python), and writes both with the URL to the connection
file, `<state dir>/label-studio/connection.json` (mode 0600): that file is
how the `label-studio` labeller and `flywheel label server` find the server.
`LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY` (the SDK's own names) point the
labeller at another server instead, e.g. the cluster's.

File I/O is in `read_connection` and `write_connection` only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flywheel.config import LabelStudioConfig
from flywheel.env import state_dir
from flywheel.processes import stop_process_group

LABEL_STUDIO_VERSION = "1.23.2"
"""The pinned server version (`requirements/label-studio.txt`)."""

EXECUTABLE_ENV = "FLYWHEEL_LABEL_STUDIO"
INSTALL_VENV = Path(".label-studio/venv")
"""Where `make label-studio` installs the server, relative to the repository root."""

URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"

OFFLINE_ENV: dict[str, str] = {
    "LATEST_VERSION_CHECK": "false",  # else each start asks PyPI for the latest version
    "COLLECT_ANALYTICS": "false",  # usage analytics
    "SENTRY_DSN": "",  # error reports, server side
    "FRONTEND_SENTRY_DSN": "",  # and from the browser
    "DO_NOT_TRACK": "1",
}
"""Label Studio's switches that keep it from calling out (core/settings/base.py of 1.23)."""

TEMPLATE_ENV = "FLYWHEEL_LABEL_STUDIO_TEMPLATE"
DATABASE_NAME = "label_studio.sqlite3"

ADMIN_SCRIPT = Path(__file__).with_name("ls_admin.py")


class LabelStudioError(RuntimeError):
    """Label Studio is not installed, did not start, or cannot be reached."""


def find_executable(repo_root: Path | None = None) -> Path:
    """The `label-studio` to run: `$FLYWHEEL_LABEL_STUDIO`, `.label-studio/venv`, else PATH.

    Raises:
        LabelStudioError: none exists (the message says how to install it).
    """
    named = os.environ.get(EXECUTABLE_ENV)
    if named:
        if not Path(named).is_file():
            raise LabelStudioError(f"{EXECUTABLE_ENV}={named}: no such file")
        return Path(named)
    local = (repo_root or Path.cwd()) / INSTALL_VENV / "bin" / "label-studio"
    if local.is_file():
        return local
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise LabelStudioError(
        f"Label Studio is not installed: run `make label-studio` (installs "
        f"label-studio=={LABEL_STUDIO_VERSION} into {INSTALL_VENV}) or set {EXECUTABLE_ENV}"
    )


@dataclass(frozen=True)
class Connection:
    """How to reach a Label Studio server and act in it.

    Attributes:
        url: the server, e.g. `http://127.0.0.1:8080`.
        token: the owner's personal access token (a JWT refresh token).
        admin: the owner's email.
        password: the owner's password (signing in to the UI); '' when unknown.
        document_root: the server's LOCAL_FILES_DOCUMENT_ROOT (None: a remote server;
            images must then be reachable some other way, e.g. S3 storage).
        data_dir: the server's data folder (None: a remote server).
        executable: the `label-studio` that runs it (None: a remote server).
        members: annotators' emails → their personal access tokens.
    """

    url: str
    token: str
    admin: str = ""
    password: str = ""
    document_root: str | None = None
    data_dir: str | None = None
    executable: str | None = None
    members: dict[str, str] = field(default_factory=dict)


def server_dir() -> Path:
    """`<state dir>/label-studio`: the server's data, its log and the connection file."""
    return state_dir() / "label-studio"


def connection_path() -> Path:
    """The connection file `flywheel label server` writes and the labeller reads."""
    return server_dir() / "connection.json"


def read_connection(path: Path | None = None) -> Connection | None:
    """The connection file's contents (None when there is none).

    Raises:
        LabelStudioError: the file is not a connection file.
    """
    path = path or connection_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Connection(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise LabelStudioError(f"{path}: not a Label Studio connection file: {err}") from None


def write_connection(connection: Connection, path: Path | None = None) -> Path:
    """Write the connection file, readable by its owner only (it holds tokens and a password)."""
    path = path or connection_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(asdict(connection), out, indent=1)
    os.replace(tmp, path)
    return path


def healthy(url: str, timeout: float = 3.0) -> bool:
    """Whether a Label Studio answers `/health` at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def connect(cfg: LabelStudioConfig | None = None) -> Connection:
    """The server the labeller talks to: `LABEL_STUDIO_URL`/`_API_KEY`, else the connection file.

    Raises:
        LabelStudioError: neither is set, or the server does not answer.
    """
    if os.environ.get(URL_ENV) and os.environ.get(TOKEN_ENV):
        root = cfg.document_root if cfg is not None else None
        connection = Connection(
            url=os.environ[URL_ENV].rstrip("/"),
            token=os.environ[TOKEN_ENV],
            document_root=None if root is None else str(root),
        )
    else:
        found = read_connection()
        if found is None:
            raise LabelStudioError(
                f"no Label Studio server: start one with `flywheel label server` (it writes "
                f"{connection_path()}), or set {URL_ENV} and {TOKEN_ENV}"
            )
        connection = found
    if not healthy(connection.url):
        raise LabelStudioError(
            f"Label Studio at {connection.url} does not answer /health: is `flywheel label "
            "server` still running?"
        )
    return connection


def server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    """The environment of a local server: its data folder, SQLite, local files, offline.

    With the state in object storage, `AWS_ENDPOINT_URL` becomes the server's
    `S3_ENDPOINT` (the endpoint of its S3 storages; `flywheel.labeling.image_storage`).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {
        **os.environ,
        **OFFLINE_ENV,
        **({"S3_ENDPOINT": endpoint} if endpoint else {}),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir.resolve()),
        "DJANGO_DB": "sqlite",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root.resolve()),
    }


@dataclass
class LabelStudioServer:
    """A Label Studio server this process started: its process, log and connection."""

    process: subprocess.Popen[bytes]
    log: Path
    connection: Connection

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM its process group (the server and its workers), SIGKILL after `timeout`."""
        stop_process_group(self.process, timeout)


def start_label_studio(
    cfg: LabelStudioConfig,
    *,
    data_dir: Path | None = None,
    port: int | None = None,
    executable: Path | None = None,
    connection_file: Path | None = None,
    members: Sequence[str] = (),
) -> LabelStudioServer:
    """Start Label Studio on `cfg.host`, wait until it answers, and write the connection file.

    The first start (an empty `data_dir`) runs the database migrations, about a
    minute on an idle machine and several on a busy one (`cfg.start_timeout_s`),
    and creates the owner; every start makes sure the owner and `members` have
    personal access tokens (kept in the connection file, reused on a restart).

    Args:
        cfg: `label.studio` (host, port, admin, document root, time-out).
        data_dir: its data folder (default `<state dir>/label-studio/data`).
        port: overrides `cfg.port` (the tests pick a free one).
        executable: the `label-studio` to run (default `find_executable()`).
        connection_file: default `connection_path()`.
        members: annotators to add to the owner's organisation.

    Raises:
        LabelStudioError: not installed, the process exited, or it did not answer in time
            (the message holds the end of its log).
    """
    executable = executable or find_executable()
    data_dir = data_dir or server_dir() / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    seed_database(data_dir, executable)
    connection_file = connection_file or connection_path()
    root = cfg.document_root if cfg.document_root is not None else state_dir()
    root.mkdir(parents=True, exist_ok=True)
    previous = read_connection(connection_file)
    same_data = previous is not None and previous.data_dir == str(data_dir.resolve())
    password = previous.password if previous and same_data else secrets.token_urlsafe(18)
    url = f"http://{cfg.host}:{port or cfg.port}"
    if healthy(url):
        raise LabelStudioError(
            f"something already answers on {url}: choose another label.studio.port"
        )
    log = data_dir.parent / "label-studio.log"
    argv = [
        str(executable),
        "start",
        "--internal-host",  # the address it binds (`--host` only names its public URL)
        cfg.host,
        "--port",
        str(port or cfg.port),
        "--no-browser",
        f"--username={cfg.admin}",
        f"--password={password}",  # one form: a random password may start with "-"
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(data_dir, root),
            start_new_session=True,  # stop() ends its process group, workers included
        )
    server = LabelStudioServer(
        process,
        log,
        Connection(
            url=url,
            token="",
            admin=cfg.admin,
            password=password,
            document_root=str(root.resolve()),
            data_dir=str(data_dir.resolve()),
            executable=str(executable),
        ),
    )
    try:
        _wait_until_healthy(server, cfg.start_timeout_s)
        known = previous.members if previous and same_data else {}
        owner = previous.token if previous and same_data and previous.token else ""
        wanted = [m for m in members if m not in known]
        if not owner or wanted:
            made = create_access_tokens(executable, data_dir, cfg.admin, wanted)
            owner = owner or made[cfg.admin]
            known = {**known, **{m: made[m] for m in wanted}}
        if not _accepted(server, owner):  # minted while the server was not yet the one answering
            made = create_access_tokens(executable, data_dir, cfg.admin, list(known))
            owner, known = made[cfg.admin], {m: made[m] for m in known}
            if not _accepted(server, owner):
                raise LabelStudioError(
                    f"the server answering on {url} refuses the owner's new access token: "
                    f"is another Label Studio on that port? (log {server.log})"
                )
        server.connection = replace(server.connection, token=owner, members=known)
        write_connection(server.connection, connection_file)
    except BaseException:
        server.stop()
        raise
    return server


def template_dir(executable: Path) -> Path:
    """The migrated empty database beside the server's venv (`make label-studio` makes it).

    `$FLYWHEEL_LABEL_STUDIO_TEMPLATE` names another folder.
    """
    named = os.environ.get(TEMPLATE_ENV)
    return Path(named) if named else Path(executable).resolve().parent.parent.parent / "template"


def seed_database(data_dir: Path, executable: Path) -> bool:
    """Copy the migrated template database into an empty data folder; whether it did.

    Saves the first start's migrations (a minute idle, several on a busy
    machine). The server then creates its owner and secret key as on any start.
    """
    target = data_dir / DATABASE_NAME
    template = template_dir(executable) / DATABASE_NAME
    if target.exists() or not template.is_file():
        return False
    shutil.copy2(template, target)
    return True


def _accepted(server: LabelStudioServer, token: str, tries: int = 10) -> bool:
    """Whether the server takes `token` (`/api/current-user/whoami`), asked while it lives.

    A personal access token is traded for an access token first (`label-studio-sdk`
    does it), so the check goes through the SDK as every later request does.
    """
    import httpx
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    client = LabelStudio(base_url=server.connection.url, api_key=token, timeout=30)
    for _ in range(tries):
        if not server.alive():
            return False
        try:
            client.users.whoami()
            return True
        except ApiError as err:
            if err.status_code not in (401, 403):
                raise LabelStudioError(f"Label Studio refused whoami: {err}") from None
        except httpx.HTTPError:
            pass  # not answering this moment: ask again
        time.sleep(2.0)
    return False


def _wait_until_healthy(server: LabelStudioServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log.read_text(errors="replace")[-2000:]
            raise LabelStudioError(
                f"Label Studio exited with status {server.process.returncode} "
                f"(log {server.log}):\n{tail}"
            )
        if healthy(server.connection.url):
            return
        time.sleep(1.0)
    server.stop()
    raise LabelStudioError(
        f"Label Studio did not answer on {server.connection.url} within {timeout:.0f} s "
        f"(the first start migrates its database; log {server.log}); raise "
        "label.studio.start_timeout_s on a busy machine"
    )


def create_access_tokens(
    executable: Path, data_dir: Path, owner: str, members: Sequence[str] = ()
) -> dict[str, str]:
    """New personal access tokens of the owner and `members` (added to the owner's organisation).

    Runs `ls_admin.py` with the interpreter of Label Studio's environment
    against the server's database.

    Raises:
        LabelStudioError: the script failed (the message holds its error output).
    """
    python = Path(executable).parent / "python"
    if not python.is_file():
        python = Path(sys.executable)  # a `label-studio` on PATH of the running interpreter
    try:
        done = subprocess.run(
            [str(python), "-I", str(ADMIN_SCRIPT), owner, *members],
            env=server_env(data_dir, data_dir),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabelStudioError(f"{ADMIN_SCRIPT.name} took over 600 s") from None
    if done.returncode != 0:
        raise LabelStudioError(f"{ADMIN_SCRIPT.name} failed:\n{done.stderr[-3000:]}")
    tokens: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return tokens


def member_token(connection: Connection, email: str, connection_file: Path | None = None) -> str:
    """The personal access token of annotator `email`, adding them to a local server if new.

    Raises:
        LabelStudioError: a remote server (no local data folder) without that member.
    """
    if email in connection.members:
        return connection.members[email]
    if connection.data_dir is None or connection.executable is None:
        raise LabelStudioError(
            f"{email} is not a member known to this machine, and {connection.url} is not a "
            "server `flywheel label server` started: invite them in Label Studio"
        )
    made = create_access_tokens(
        Path(connection.executable), Path(connection.data_dir), connection.admin, [email]
    )
    write_connection(
        replace(connection, members={**connection.members, email: made[email]}), connection_file
    )
    return made[email]


@contextmanager
def running_label_studio(
    cfg: LabelStudioConfig, *, members: Sequence[str] = ()
) -> Iterator[Connection]:
    """The local server, started for the block unless one already answers (then reused).

    The demo starts Label Studio once this way: a server `flywheel label server`
    left running is reused, else one is started and stopped at the end.
    """
    found = read_connection()
    if found is not None and healthy(found.url):
        for email in members:
            member_token(found, email)
        yield read_connection() or found
        return
    server = start_label_studio(cfg, members=members)
    try:
        yield server.connection
    finally:
        server.stop()
