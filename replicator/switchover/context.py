"""What every step of a switchover works with, and how a step fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.destinations.base import DestinationSession
from replicator.errors import ReplicatorError
from replicator.filters import SelectedTable
from replicator.job import Job
from replicator.objectplan import PlannedObjects
from replicator.switchover.marker import Marker


@dataclass(frozen=True)
class Options:
    timeout_s: float = 120.0
    verify: bool = True
    drop_slot: bool = False
    read_only_source: bool = False
    terminate: bool = False


class StepFailed(ReplicatorError):
    def __init__(self, result: str, exit_code: int = 1, details: list[str] | None = None):
        super().__init__(result)
        self.result = result
        self.exit_code = exit_code
        self.details = details or []


@dataclass
class Context:
    job: Job
    options: Options
    src: psycopg.Connection[Any]
    dst: DestinationSession
    tables: list[SelectedTable]
    planned: dict[tuple[str, str], PlannedObjects]
    slots: list[str]
    publications: list[str]
    mark: Marker | None = None
