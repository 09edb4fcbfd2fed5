"""The Dockerfile of infra/docker, read as its stages and instructions."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO

DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """`{stage: [(INSTRUCTION, arguments)]}` in file order, continued lines joined, no comments."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, line
            current = stages.setdefault(match.group(2) or f"stage{len(stages)}", [])
        if current is not None:
            current.append((instruction, rest.strip()))
    return stages
