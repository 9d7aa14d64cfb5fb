"""RDS / Aurora facts the program and the checks rely on, validated here because moto does not.

moto accepts any parameter-group family and any parameter name; AWS does not. So the family
naming, the parameters logical replication needs, and which of them are static (only
``pending-reboot`` allowed) are written down once, here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

Engine = Literal["postgres", "aurora-postgresql"]
ApplyMethod = Literal["immediate", "pending-reboot"]

ENGINES: tuple[Engine, ...] = ("postgres", "aurora-postgresql")
# Major versions with a parameter-group family on RDS (postgres11..17) and Aurora (aurora-postgresql11..17).
SUPPORTED_MAJORS = range(11, 18)
_INT_MAX = 262143  # MAX_BACKENDS: the upper bound PostgreSQL itself puts on slot and sender counts


class ParameterError(ValueError):
    """A parameter group that AWS would refuse (unknown family, name, value or apply method)."""


@dataclass(frozen=True)
class ParameterRule:
    """What AWS allows for one parameter: static ones change only on reboot."""

    name: str
    static: bool
    minimum: int | None = None
    maximum: int | None = None
    aurora_only: bool = False
    cluster_level: bool = False  # Aurora: lives in the cluster parameter group, not the instance one
    since_major: int | None = None  # the first PostgreSQL major that has the parameter

    def check(self, engine: Engine, value: str, apply_method: str, major: int | None = None) -> None:
        if self.aurora_only and engine != "aurora-postgresql":
            raise ParameterError(f"{self.name} exists only on aurora-postgresql, not {engine}")
        if self.since_major is not None and major is not None and major < self.since_major:
            raise ParameterError(
                f"{self.name} exists from PostgreSQL {self.since_major} on; this source runs "
                f"PostgreSQL {major}"
            )
        if apply_method not in ("immediate", "pending-reboot"):
            raise ParameterError(f"{self.name}: apply method must be immediate or pending-reboot, not {apply_method!r}")
        if self.static and apply_method != "pending-reboot":
            raise ParameterError(
                f"{self.name} is a static parameter: AWS accepts only apply method pending-reboot for it"
            )
        if self.minimum is not None:
            try:
                number = int(value)
            except ValueError:
                raise ParameterError(f"{self.name} must be an integer, not {value!r}") from None
            if number < self.minimum or (self.maximum is not None and number > self.maximum):
                raise ParameterError(f"{self.name} must be between {self.minimum} and {self.maximum}, not {number}")


# The parameters a logical-replication source may need to set. Anything else is refused with a
# "did you mean" so a typo fails before AWS (or, in tests, silently in moto).
RULES: dict[str, ParameterRule] = {
    r.name: r
    for r in (
        ParameterRule("rds.logical_replication", static=True, minimum=0, maximum=1, cluster_level=True),
        ParameterRule("max_replication_slots", static=True, minimum=1, maximum=_INT_MAX, cluster_level=True),
        ParameterRule("max_wal_senders", static=True, minimum=1, maximum=_INT_MAX, cluster_level=True),
        ParameterRule("max_worker_processes", static=True, minimum=1, maximum=_INT_MAX),
        ParameterRule("max_logical_replication_workers", static=True, minimum=0, maximum=_INT_MAX),
        ParameterRule("wal_sender_timeout", static=False, minimum=0, maximum=3_600_000, cluster_level=True),
        # In MB; -1 = unbounded. From PostgreSQL 13 (a slot is then invalidated rather than the disk filled).
        ParameterRule(
            "max_slot_wal_keep_size", static=False, minimum=-1, maximum=2_147_483_647, since_major=13
        ),
        ParameterRule("logical_decoding_work_mem", static=False, minimum=64, maximum=2_147_483_647),
        ParameterRule("idle_in_transaction_session_timeout", static=False, minimum=0, maximum=2_147_483_647),
        ParameterRule("statement_timeout", static=False, minimum=0, maximum=2_147_483_647),
        ParameterRule("shared_preload_libraries", static=True),
        ParameterRule("aurora.enhanced_logical_replication", static=True, minimum=0, maximum=1, aurora_only=True),
        ParameterRule("aurora.logical_replication_backup", static=True, minimum=0, maximum=1, aurora_only=True),
        ParameterRule("aurora.logical_replication_globaldb", static=True, minimum=0, maximum=1, aurora_only=True),
    )
}


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    apply_method: ApplyMethod


def major_version(engine_version: str) -> int:
    """``16`` for ``"16"``, ``"16.4"`` or ``16``; refuses what no family exists for."""
    m = re.fullmatch(r"(\d+)(?:\.\d+)*", str(engine_version).strip())
    if not m:
        raise ParameterError(f"engine version must look like 16 or 16.4, not {engine_version!r}")
    major = int(m.group(1))
    if major not in SUPPORTED_MAJORS:
        raise ParameterError(
            f"PostgreSQL {major} has no supported parameter-group family "
            f"(supported majors: {SUPPORTED_MAJORS.start}..{SUPPORTED_MAJORS.stop - 1})"
        )
    return major


def parameter_family(engine: str, engine_version: str) -> str:
    """The parameter-group family: ``postgres16`` or ``aurora-postgresql16``."""
    if engine not in ENGINES:
        hint = difflib.get_close_matches(engine, ENGINES, n=1)
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ParameterError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}{more}")
    return f"{engine}{major_version(engine_version)}"


def required_parameters(max_replication_slots: int, max_wal_senders: int) -> list[Parameter]:
    """What logical replication needs, with the apply method AWS demands for each."""
    return [
        Parameter("rds.logical_replication", "1", "pending-reboot"),
        Parameter("max_replication_slots", str(max_replication_slots), "pending-reboot"),
        Parameter("max_wal_senders", str(max_wal_senders), "pending-reboot"),
        # 0 = never drop an idle walsender: a long snapshot may leave the stream quiet for a while.
        Parameter("wal_sender_timeout", "0", "immediate"),
    ]


def default_apply_method(name: str) -> ApplyMethod:
    rule = RULES.get(name)
    return "pending-reboot" if rule is None or rule.static else "immediate"


def validate_parameters(
    engine: Engine, parameters: list[Parameter], major: int | None = None
) -> list[Parameter]:
    """Refuse unknown names, duplicates, wrong values and apply methods AWS would reject.

    ``major`` (the PostgreSQL major version) also refuses parameters the version does not have.
    """
    seen: set[str] = set()
    for p in parameters:
        rule = RULES.get(p.name)
        if rule is None:
            hint = difflib.get_close_matches(p.name, RULES, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(sorted(RULES))}"
            raise ParameterError(f"unknown RDS parameter {p.name!r}{more}")
        if p.name in seen:
            raise ParameterError(f"parameter {p.name} is set twice")
        seen.add(p.name)
        rule.check(engine, p.value, p.apply_method, major)
    return parameters


def split_by_level(engine: Engine, parameters: list[Parameter]) -> tuple[list[Parameter], list[Parameter]]:
    """``(cluster group, instance group)``: on Aurora, instance-level parameters belong in a DB parameter
    group on the instances; a cluster parameter group would not apply them. RDS has only the first."""
    if engine != "aurora-postgresql":
        return list(parameters), []
    cluster = [p for p in parameters if RULES[p.name].cluster_level]
    return cluster, [p for p in parameters if not RULES[p.name].cluster_level]


WAL_KEEP_SIZE = "max_slot_wal_keep_size"


def wal_keep_size_parameter(size_gb: float) -> Parameter:
    """``max_slot_wal_keep_size`` (a number of MB on the server) for a bound in GB; dynamic, so immediate."""
    return Parameter(WAL_KEEP_SIZE, str(round(size_gb * 1024)), "immediate")


def merge_parameters(required: list[Parameter], extra: dict[str, str]) -> list[Parameter]:
    """Required parameters plus user extras; extras may not redefine a required one."""
    names = {p.name for p in required}
    clash = sorted(names & set(extra))
    if clash:
        raise ParameterError(
            f"{', '.join(clash)} are set by the program (from maxReplicationSlots / maxWalSenders / "
            "maxSlotWalKeepSizeGb); remove them from the extra parameters"
        )
    return [*required, *(Parameter(n, str(v), default_apply_method(n)) for n, v in extra.items())]


@dataclass(frozen=True)
class RdsEndpoint:
    """What an RDS host name tells us: which instance or cluster, in which region."""

    identifier: str
    region: str
    kind: Literal["instance", "cluster"]


_ENDPOINT = re.compile(
    r"^(?P<id>[a-z][a-z0-9-]*)\.(?P<cluster>cluster-(?:ro-|custom-)?)?[a-z0-9]+\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)"
    r"\.rds\.amazonaws\.com(?:\.cn)?$"
)


def parse_endpoint(host: str) -> RdsEndpoint | None:
    """``mydb.abc123.eu-west-1.rds.amazonaws.com`` -> instance ``mydb`` in ``eu-west-1``."""
    m = _ENDPOINT.match(host.strip().lower())
    if not m:
        return None
    return RdsEndpoint(m.group("id"), m.group("region"), "cluster" if m.group("cluster") else "instance")
