"""Shared fixtures: a state directory per test, plan files in tmp_path, and
clean-up of the Python kinds a test registers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rollback


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh state directory (journal, locks) for one test."""
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def write_plan(tmp_path: Path) -> Callable[[str], Path]:
    """Writes a plan file (dedented) and returns its path."""

    def write(text: str, name: str = "plan.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


@pytest.fixture
def kinds() -> Iterator[list[str]]:
    """Kinds a test registers; removed afterwards so tests stay independent."""
    registered: list[str] = []
    yield registered
    for kind in registered:
        rollback.unregister(kind)
