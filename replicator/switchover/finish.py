"""The destination's side of a switchover, once it holds everything: sequences, constraints,
verification, the promotion record, and the slots and publications that are no longer needed."""

from __future__ import annotations

import time

from psycopg import sql

from replicator import verify as verify_rows_of
from replicator.destinations.base import SwitchoverMark
from replicator.source.slots import get_slot
from replicator.switchover.context import Context, StepFailed
from replicator.tableobjects import sequence_values

SLOT_RELEASE_S = 30.0  # how long the stream may take to stop (it polls the record every second)


def sequences(ctx: Context) -> str:
    names = sorted({s.qualified for p in ctx.planned.values() for s in p.objects.all_sequences})
    values = sequence_values(ctx.src, names)
    unreadable = [".".join(v.name) for v in values if not v.readable]
    if unreadable:
        user = sql.Identifier(ctx.src.info.user).as_string(ctx.src)
        raise StepFailed(
            f"cannot read sequence value(s) {', '.join(unreadable)} at the source; fix: "
            + " ".join(f"GRANT SELECT ON SEQUENCE {n} TO {user};" for n in unreadable)
        )
    moved = ctx.dst.set_sequences(values, exact=True)
    missing = sorted(set(names) - {v.name for v in ctx.dst.sequence_values(names)})
    result = f"ok: {len(values)} sequence(s) at the source's values ({len(moved)} moved)"
    if missing:
        result += f"; not at the destination: {', '.join('.'.join(m) for m in missing)}"
    return result


def validate(ctx: Context) -> str:
    validated: list[str] = []
    failed: list[str] = []
    for key, planned in ctx.planned.items():
        if ctx.dst.describe(key) is None:
            continue
        valid_at_source = {c.name for c in planned.objects.constraints if c.validated}
        pending = [n for n in ctx.dst.not_valid_constraints(key) if n in valid_at_source]
        if not pending:
            continue
        notes = ctx.dst.validate_constraints(key, pending)
        failed += notes
        validated += [f"{'.'.join(key)}.{n}" for n in pending]
    if failed:
        raise StepFailed(f"{len(failed)} constraint(s) do not hold at the destination", details=failed)
    if not validated:
        return "ok: nothing NOT VALID"
    return f"ok: validated {', '.join(validated)}"


def verify_rows(ctx: Context) -> str:
    if not ctx.options.verify:
        return "skipped (--no-verify)"
    outcome = verify_rows_of.verify(ctx.job, timeout_s=ctx.options.timeout_s)
    if not outcome.equal:
        different = [t.display for t in outcome.tables if not t.equal]
        raise StepFailed(
            f"{len(different)} table(s) DIFFERENT: {', '.join(different)} (as `replicator verify` shows)",
            exit_code=verify_rows_of.DIFFERENT,
            details=verify_rows_of.report.lines(outcome.tables, [], outcome.notes, 20, outcome.seconds),
        )
    rows = sum(t.source_rows for t in outcome.tables)
    return f"ok: {len(outcome.tables)} table(s) equal, {rows:,} rows"


def record(ctx: Context) -> str:
    streaming = _streaming(ctx)
    with ctx.dst.transaction():
        ctx.dst.state.record_switchover(ctx.job.job_id, ctx.mark.lsn if ctx.mark else None, ctx.slots)
    if not streaming:
        return "ok: the destination is promoted (no stream was running)" + _after_the_stream(ctx)
    if not _wait_released(ctx, streaming):
        return (f"ok: the destination is promoted; the stream still holds slot(s) {', '.join(streaming)} "
                f"after {SLOT_RELEASE_S:g} s (it stops by itself){_identities_later()}")  # fmt: skip
    return "ok: the destination is promoted; the running stream stopped by itself" + _after_the_stream(ctx)


def _after_the_stream(ctx: Context) -> str:
    """Once nothing streams into the destination: sequences again (forward only: the stream may
    have applied rows written after ``sequences`` ran, and the application's first insert at the
    destination must not collide with them), then identity columns."""
    names = sorted({s.qualified for p in ctx.planned.values() for s in p.objects.all_sequences})
    moved = ctx.dst.set_sequences(sequence_values(ctx.src, names)) if names else []
    said = ""
    if moved:
        said = (f"; sequence(s) {', '.join('.'.join(m) for m in moved)} moved forward again: the source "
                "was still written after the marker, and what it took after the stream stopped is not "
                "at the destination (stop the writers first, or use --read-only-source)")  # fmt: skip
    return said + _identities(ctx)


def already_promoted(ctx: Context, mark: SwitchoverMark) -> str:
    """A switchover run again (by a careless operator, or after one that crashed or failed after
    ``record``): the destination may already take the application's writes, so its sequences and
    rows are left alone (setting the source's values again could move a sequence back, and the
    next insert would collide). Only what ``record`` may not have finished is done."""
    said = (f"already promoted at {mark.at:%Y-%m-%d %H:%M:%S %Z} (marker {mark.marker_lsn or 'none'}): "
            "marker, sequences, validate and verify not run again, the destination's rows and sequences "
            "left as they are")  # fmt: skip
    streaming = _streaming(ctx)
    if streaming and not _wait_released(ctx, streaming):
        return f"ok: {said}; the stream still holds slot(s) {', '.join(streaming)}{_identities_later()}"
    return f"ok: {said}" + _identities(ctx)


def _streaming(ctx: Context) -> list[str]:
    return [s for s in ctx.slots if (info := get_slot(ctx.src, s)) is not None and info.active]


def _identities(ctx: Context) -> str:
    """Identity columns GENERATED ALWAYS where the source has them. Only once nothing streams into
    the destination any more: the stream's inserts name the column, which ALWAYS refuses, so doing
    it earlier (and then failing at verify, or crashing) would break the stream that still runs."""
    changed: list[str] = []
    for key, planned in ctx.planned.items():
        if ctx.dst.describe(key) is not None:
            changed += ctx.dst.identity_as_source(key, planned.objects)
    if not changed:
        return ""
    return f"; identity column(s) GENERATED ALWAYS as at the source: {', '.join(changed)}"


def _identities_later() -> str:
    return "; identity columns left GENERATED BY DEFAULT until it stops: run switchover again then"


def _wait_released(ctx: Context, slots: list[str]) -> bool:
    deadline = time.monotonic() + SLOT_RELEASE_S
    while time.monotonic() < deadline:
        if not any((info := get_slot(ctx.src, s)) is not None and info.active for s in slots):
            return True
        time.sleep(0.2)
    return False


def cleanup(ctx: Context) -> str:
    slots = [s for s in ctx.slots if get_slot(ctx.src, s) is not None]
    drop_slots = [
        sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(s)).as_string(ctx.src)
        for s in slots
    ]
    drop_publications = [
        sql.SQL("DROP PUBLICATION IF EXISTS {};").format(sql.Identifier(p)).as_string(ctx.src)
        for p in ctx.publications
    ]
    commands = drop_slots + drop_publications
    if not commands:
        return "ok: no slot or publication to drop"
    if not ctx.options.drop_slot:
        return "run at the source when the old source is retired (or pass --drop-slot): " + " ".join(commands)
    busy = [s for s in slots if (info := get_slot(ctx.src, s)) is not None and info.active]
    if busy and not _wait_released(ctx, busy):
        raise StepFailed(
            f"slot(s) {', '.join(busy)} still in use: stop the stream, then run: " + " ".join(commands)
        )
    for command in commands:
        ctx.src.execute(command)
    return "ok: dropped " + ", ".join(
        [*(f"slot {s}" for s in slots), *(f"publication {p}" for p in ctx.publications)]
    )
