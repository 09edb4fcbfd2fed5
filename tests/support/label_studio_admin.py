"""Run by Label Studio's own Python (its venv), never imported: annotators and their API tokens.

Label Studio 1.23 refuses legacy tokens unless the organisation enables them,
and has no API to add a user to an organisation without an invitation. This
script does both through Label Studio's Django models, against the same
SQLite database the running server uses (`LABEL_STUDIO_BASE_DATA_DIR`), and
prints `{"<email>": "<token>", ...}` as JSON. Usage:

    LABEL_STUDIO_BASE_DATA_DIR=... <ls venv>/bin/python label_studio_admin.py OWNER EMAIL...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(owner: str, emails: list[str]) -> None:
    """Enable legacy tokens in the owner's organisation; add the members; print their tokens."""
    import label_studio

    sys.path.insert(0, str(Path(label_studio.__file__).parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
    import django

    django.setup()
    from jwt_auth.models import JWTSettings
    from rest_framework.authtoken.models import Token
    from users.models import User

    boss = User.objects.get(email=owner)
    org = boss.active_organization
    settings, _ = JWTSettings.objects.get_or_create(organization=org)
    settings.legacy_api_tokens_enabled = True
    settings.save()
    tokens = {}
    for email in [owner, *emails]:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = User.objects.create_user(email=email, password="annotator-pass-1")
            user.username = email.split("@")[0]
            org.add_user(user)
            user.active_organization = org
            user.save()
        tokens[email] = Token.objects.get_or_create(user=user)[0].key
    print(json.dumps(tokens))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
