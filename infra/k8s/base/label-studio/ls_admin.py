"""Run by Label Studio's own Python, never imported by flywheel: members and their access tokens.

Label Studio (its own virtual environment: its dependencies conflict with
the project's lock) has no API to create a user's first personal access
token without a browser session, nor to add a member to an organisation
without an invitation. `flywheel.labeling.server.create_access_tokens` runs
this file with Label Studio's interpreter, against the database of the
running server (the same Django settings from the same environment: SQLite
under `LABEL_STUDIO_BASE_DATA_DIR` locally, PostgreSQL from `DJANGO_DB` and
`POSTGRE_*` on a cluster), and reads one JSON line:
`{"<email>": "<personal access token>", ...}`. A personal access token is a
JWT refresh token signed with the server's `SECRET_KEY` (`label-studio-sdk`
2.x trades it for access tokens); the API refuses legacy tokens by default.
Usage:

    LABEL_STUDIO_BASE_DATA_DIR=... <ls venv>/bin/python -I ls_admin.py OWNER [MEMBER...]

With `--secret-patch=PATH` it prints nothing and writes PATH (mode 0600): a
merge patch of a Kubernetes Secret whose key `token` is the owner's token, what
the cluster's token Job (infra/k8s/base/label-studio.yaml) applies with kubectl;
the token never reaches the Job's log.

Everything is imported inside `main`: pytest's doctest collection imports
this module in flywheel's environment, where Django is not installed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

MEMBER_PASSWORD_BYTES = 18
"""Members sign in with their token only; their password is random and never shown."""

SECRET_PATCH_OPTION = "--secret-patch="
SECRET_TOKEN_KEY = "token"
"""The key of the token in the Secret the cluster's components read (LABEL_STUDIO_API_KEY)."""


def main(owner: str, members: list[str]) -> dict[str, str]:
    """Add each member to the owner's organisation; a new access token of each (owner too)."""
    import secrets

    import label_studio

    sys.path.insert(0, str(Path(label_studio.__file__).parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
    import django

    django.setup()
    from jwt_auth.models import JWTSettings, LSAPIToken
    from users.models import User

    boss = User.objects.filter(email=owner).first()
    if boss is None:
        raise SystemExit(f"no Label Studio user {owner!r}: start the server with --username first")
    org = boss.active_organization
    settings, _ = JWTSettings.objects.get_or_create(organization=org)
    if not settings.api_tokens_enabled:
        settings.api_tokens_enabled = True
        settings.save()
    tokens = {}
    for email in [owner, *members]:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = User.objects.create_user(
                email=email, password=secrets.token_urlsafe(MEMBER_PASSWORD_BYTES)
            )
            user.username = email.split("@")[0]
        if not org.has_user(user):
            org.add_user(user)
        user.active_organization = org
        user.save()
        tokens[email] = LSAPIToken.for_user(user).get_full_jwt()
    return tokens


def secret_patch(token: str) -> dict[str, dict[str, str]]:
    """A merge patch of a Secret setting its key `token`.

    >>> secret_patch("abc")
    {'data': {'token': 'YWJj'}}
    """
    return {"data": {SECRET_TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


if __name__ == "__main__":
    patch = [a for a in sys.argv[1:] if a.startswith(SECRET_PATCH_OPTION)]
    emails = [a for a in sys.argv[1:] if not a.startswith(SECRET_PATCH_OPTION)]
    made = main(emails[0], emails[1:])
    if patch:
        target = Path(patch[-1].removeprefix(SECRET_PATCH_OPTION))
        write_private(target, json.dumps(secret_patch(made[emails[0]])))
        print(f"wrote the owner's token as a Secret patch to {target}", file=sys.stderr)
    else:
        print(json.dumps(made))
