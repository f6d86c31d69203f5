#!/usr/bin/env python3
"""The dependencies the two roles install, read from ../pyproject.toml, for an offline wheelhouse:

    python3 ansible/wheelhouse.py | xargs python3 -m pip download --only-binary=:all: --dest ansible/wheelhouse
"""

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
ROLES_EXTRAS = ("agent", "controller")  # the hostagent role installs [agent], hostagent_controller [controller]


def requirements() -> list[str]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return [spec for extra in ROLES_EXTRAS for spec in extras[extra]]


if __name__ == "__main__":
    sys.stdout.write("".join(f"{spec}\n" for spec in requirements()))
