"""Delta-snapshot test helpers: one source, one destination, configs, runs and comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Database
from tests.support import checksum, run_cli, write


@dataclass
class DeltaSetup:
    source: Database
    dest: Database
    tmp: Path
    extractor: str = "delta-snapshot:\n  threads: 2\n  min-job-size-rows: 100\n"
    dest_extra: dict[str, Any] = field(default_factory=dict)
    filter: str | None = None

    def args(self, *extra: str) -> list[str]:
        args = [
            "run",
            "delta-snapshot",
            "--no-progress",
            "--source",
            str(self.source.write_config(self.tmp / "source.yaml")),
            "--destination",
            str(self.dest.write_config(self.tmp / "destination.yaml", **self.dest_extra)),
            "--extractor",
            str(write(self.tmp / "extractor.yaml", self.extractor)),
        ]
        if self.filter is not None:
            args += ["--filter", str(write(self.tmp / "filter.yaml", self.filter))]
        return [*args, *extra]

    def once(self, *extra: str) -> None:
        assert run_cli(*self.args("--once", *extra)) == 0

    def assert_same(self, *tables: str, schema: str = "public") -> None:
        for table in tables:
            assert checksum(self.dest, schema, table) == checksum(self.source, schema, table), table


@pytest.fixture
def delta(source_db: Database, dest_db: Database, tmp_path: Path) -> DeltaSetup:
    return DeltaSetup(source_db, dest_db, tmp_path)
