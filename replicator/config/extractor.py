"""Extractor config: how each mode reads the source (`snapshot`, `realtime`, `delta-snapshot`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from replicator.config.model import ConfigModel


def _default_threads() -> int:
    # One more worker than cores: each worker alternates between waiting on the source and on
    # the destination, so an extra one keeps every core busy.
    return max(2, min(8, (os.cpu_count() or 1) + 1))


class SplitHints(ConfigModel):
    row_count_estimate: int | None = Field(default=None, ge=0)
    split_key_min_value: Any = None
    split_key_max_value: Any = None


class TableKeyConfig(ConfigModel):
    """Per-table settings every section has: the key of a table without a primary key."""

    row_identifier_key: list[str] | None = None


class SnapshotTableConfig(TableKeyConfig):
    split_key: str | None = None
    split_hints: SplitHints | None = None


class DeltaTableConfig(TableKeyConfig):
    update_key: list[str] | str | None = None
    split_key: str | None = None
    replicate_deletes: bool | None = None


class _PerTable(ConfigModel):
    catalog: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")

    def table_settings(self) -> Mapping[str, TableKeyConfig | None]:
        raise NotImplementedError


class SnapshotPerTable(_PerTable):
    tables: dict[str, SnapshotTableConfig | None] = {}

    def table_settings(self) -> Mapping[str, TableKeyConfig | None]:
        return self.tables


class RealtimePerTable(_PerTable):
    tables: dict[str, TableKeyConfig | None] = {}

    def table_settings(self) -> Mapping[str, TableKeyConfig | None]:
        return self.tables


class DeltaPerTable(_PerTable):
    tables: dict[str, DeltaTableConfig | None] = {}

    def table_settings(self) -> Mapping[str, TableKeyConfig | None]:
        return self.tables


class CopySettings(ConfigModel):
    """How a snapshot copies: the snapshot mode, and delta-snapshot's first pass of a table."""

    threads: int = Field(default_factory=_default_threads, ge=1, le=256)
    fetch_size_rows: int = Field(default=5000, ge=1)  # accepted for compatibility; COPY streams
    min_job_size_rows: int = Field(default=100_000, ge=1)
    max_jobs_per_chunk: int = Field(default=32, ge=1)


class SnapshotConfig(CopySettings):
    per_table_config: list[SnapshotPerTable] = []


class Heartbeat(ConfigModel):
    enable: bool = True
    catalog: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    table_name: str = "replicate_io_cdc_heartbeat"
    column_name: str = "timestamp"
    interval_ms: int = Field(default=10_000, ge=100)


class StartPosition(ConfigModel):
    start_lsn: str | None = None

    @field_validator("start_lsn")
    @classmethod
    def _lsn(cls, value: str | None) -> str | None:
        if value is not None:
            hi, sep, lo = value.partition("/")
            try:
                int(hi, 16), int(lo, 16)
            except ValueError:
                sep = ""
            if not sep:
                raise ValueError(f"start-lsn must look like 16/B374D848, got {value!r}")
        return value


class RealtimeConfig(ConfigModel):
    # Accepted for compatibility with Arcion configs; realtime applies with one thread per
    # replication slot, so parallelism comes from several slots (a warning says so when > 1).
    threads: int = Field(default=1, ge=1, le=64)
    fetch_size_rows: int = Field(default=10_000, ge=1)
    fetch_duration_per_extractor_slot_s: float = Field(default=3, gt=0)
    heartbeat: Heartbeat = Heartbeat()
    start_position: StartPosition | None = None
    per_table_config: list[RealtimePerTable] = []


class DeltaSnapshotConfig(CopySettings):
    row_identifier_key: list[str] | None = None
    update_key: list[str] | str | None = None
    replicate_deletes: bool = True
    interval_s: float = Field(default=60, gt=0)
    per_table_config: list[DeltaPerTable] = []


class MetricsConfig(ConfigModel):
    """Where ``run`` serves Prometheus metrics (``--metrics-port``/``--metrics-host`` win over these)."""

    port: int | None = Field(default=None, ge=0, le=65535)  # None: no metrics endpoint
    host: str = Field(default="127.0.0.1", min_length=1)


class ExtractorConfig(ConfigModel):
    snapshot: SnapshotConfig = SnapshotConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    delta_snapshot: DeltaSnapshotConfig = DeltaSnapshotConfig()
    metrics: MetricsConfig = MetricsConfig()  # run-wide, not per mode: this is the run's one settings file
