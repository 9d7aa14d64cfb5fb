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

    @property
    def job_id(self) -> str:
        """Names this replication in the destination's state: the source it reads from."""
        src = self.source.value
        return f"{src.host}:{src.port}/{src.database}"
