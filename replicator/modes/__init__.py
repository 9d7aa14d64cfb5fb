"""The replication modes. Each module exposes ``run(job) -> exit code``."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from replicator.errors import ConfigError
from replicator.job import Job

if TYPE_CHECKING:
    from replicator.destinations.base import DestinationSession

log = logging.getLogger(__name__)

MODES: dict[str, str] = {
    "snapshot": "replicator.modes.snapshot",
    "realtime": "replicator.modes.realtime",
    "delta-snapshot": "replicator.modes.delta_snapshot",
    "full": "replicator.modes.full",
}


class PromotedDestination(ConfigError):
    """``replicator switchover`` promoted the destination: writing into it again needs --fresh (exit 2)."""


def runner(mode: str) -> Callable[[Job], int]:
    """The mode's ``run``, behind the checks every mode needs before its first write anywhere."""
    module = importlib.import_module(MODES[mode])

    def run(job: Job) -> int:
        from replicator.destinations import open_destination
        from replicator.identity import identify

        # One destination session for these checks (each new one is a connection and its
        # authentication: start-up time of every run), opened when first asked for: after the
        # source is reached, so that an unreachable source is the error a run reports first.
        destination = open_destination(job.destination.value)
        with ExitStack() as closing:
            opened: list[DestinationSession] = []

            def session() -> DestinationSession:
                if not opened:
                    opened.append(closing.enter_context(destination.open_session("replicator/run")))
                return opened[0]

            # Refuses a destination that is the source (exit 2) and names the job by the source's identity.
            job = identify(job, session)
            refuse_promoted(job, session())
        result: int = module.run(job)
        return result

    return run


def refuse_promoted(job: Job, dst: DestinationSession) -> None:
    """A destination that ``switchover`` promoted takes the application's writes now: replicating
    into it would overwrite them. Refused unless ``--fresh`` (which forgets the switchover)."""
    if not dst.state.present():
        return
    mark = dst.state.switchover(job.job_id)
    if mark is None:
        return
    if not job.fresh:
        raise PromotedDestination(
            f"{job.destination.where('host')}: the destination was promoted by `replicator "
            f"switchover` at {mark.at:%Y-%m-%d %H:%M:%S %Z}: it takes the application's writes now, and "
            f"replicating into it again would overwrite them. To start a new replication into it anyway "
            f"(its tables are copied again), run with --fresh; or point --destination elsewhere"
        )
    log.warning(
        "the destination was promoted by `replicator switchover` at %s; --fresh: starting over into it",
        f"{mark.at:%Y-%m-%d %H:%M:%S}",
    )
    dst.state.forget_switchover(job.job_id)
