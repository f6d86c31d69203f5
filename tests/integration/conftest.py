"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import KINDS, build


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The six real disk images (sfdisk, loop devices, grub-install), built once per run."""
    directory = tmp_path_factory.mktemp("images")
    return {kind: build(directory, kind) for kind in KINDS}
