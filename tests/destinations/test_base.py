"""The destination has one face: the modes talk to ``replicator.destinations`` only."""

from __future__ import annotations

import re
from pathlib import Path

import replicator

PACKAGE = Path(replicator.__file__).resolve().parent


def test_nothing_outside_the_destinations_package_imports_an_implementation() -> None:
    """``open_destination`` is the only place that picks one; the engines use ``base``'s protocols."""
    importing = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "destinations" not in p.relative_to(PACKAGE).parts
        and re.search(r"destinations\.postgres|destinations import postgres", p.read_text())
    )
    assert importing == []
