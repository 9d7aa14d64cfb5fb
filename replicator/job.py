"""What one invocation of a mode is asked to do: the validated configs plus run options."""

from __future__ import annotations

from dataclasses import dataclass

from replicator.config import ConfigFile, ConnectionConfig, ExtractorConfig, FilterConfig


@dataclass(frozen=True)
class Job:
    source: ConfigFile[ConnectionConfig]
    destination: ConfigFile[ConnectionConfig]
    filter: ConfigFile[FilterConfig] | None
    extractor: ConfigFile[ExtractorConfig]
    once: bool = False
    fresh: bool = False
    progress: bool | None = None  # None: a live display when stderr is a terminal
    # The source's identity (system identifier/database, see replicator.identity), once known.
    source_key: str | None = None

    @property
    def job_id(self) -> str:
        """Names this replication in the destination's state: the source it reads from.

        By the source's identity when known, so that spelling the host differently (or reaching
        it through a tunnel) finds the same checkpoints and takes the same lock.
        """
        return self.source_key or self.legacy_job_id

    @property
    def legacy_job_id(self) -> str:
        """The name used before identities: the source's host, port and database as spelt in the config."""
        src = self.source.value
        return f"{src.host}:{src.port}/{src.database}"
