"""Run by Label Studio's own Python, never imported by flywheel: members and their access tokens.

Label Studio (its own virtual environment: its dependencies conflict with
the project's lock) has no API to create a user's first personal access
token without a browser session, nor to add a member to an organisation
without an invitation. `flywheel.labeling.server.create_access_tokens` runs
this file with Label Studio's interpreter, against the SQLite database of the
running server (`LABEL_STUDIO_BASE_DATA_DIR`), and reads one JSON line:
`{"<email>": "<personal access token>", ...}`. A personal access token is a
JWT refresh token (`label-studio-sdk` 2.x trades it for access tokens); the
API refuses legacy tokens by default. Usage:

    LABEL_STUDIO_BASE_DATA_DIR=... <ls venv>/bin/python -I ls_admin.py OWNER [MEMBER...]

Everything is imported inside `main`: pytest's doctest collection imports
this module in flywheel's environment, where Django is not installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MEMBER_PASSWORD_BYTES = 18
"""Members sign in with their token only; their password is random and never shown."""


def main(owner: str, members: list[str]) -> None:
    """Add each member to the owner's organisation; print a new access token of each (owner too)."""
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
    print(json.dumps(tokens))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
