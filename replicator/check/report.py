"""Check results and the report a user reads: what holds, what does not, and the exact fix."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Status(enum.Enum):
    OK = "ok"
    FAIL = "FAIL"
    WARN = "warn"  # worth knowing, does not stop replication
    SKIP = "skip"  # could not be checked (says why), or does not apply


@dataclass(frozen=True)
class CheckResult:
    layer: str  # "source", "tables", "aws", "destination"
    name: str
    status: Status
    detail: str
    fix: str | None = None  # SQL to run, or the AWS CLI command / console step

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def ok(layer: str, name: str, detail: str) -> CheckResult:
    return CheckResult(layer, name, Status.OK, detail)


def fail(layer: str, name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(layer, name, Status.FAIL, detail, fix)


def warn(layer: str, name: str, detail: str, fix: str | None = None) -> CheckResult:
    return CheckResult(layer, name, Status.WARN, detail, fix)


def skip(layer: str, name: str, detail: str) -> CheckResult:
    return CheckResult(layer, name, Status.SKIP, detail)


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)

    def add(self, results: CheckResult | Iterable[CheckResult]) -> None:
        if isinstance(results, CheckResult):
            self.results.append(results)
        else:
            self.results.extend(results)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def find(self, name: str) -> CheckResult:
        """The result of the check called ``name`` (tests and callers look one up)."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; have {[r.name for r in self.results]}")

    def render(self) -> str:
        lines = []
        width = max((len(r.name) for r in self.results), default=0)
        for r in self.results:
            lines.append(f"{r.status.value:<4}  {r.layer:<11} {r.name:<{width}}  {r.detail}")
            if r.fix:
                fix_lines = r.fix.splitlines()
                lines.append(f"{'':<4}  {'':<11} {'':<{width}}  fix: {fix_lines[0]}")
                lines.extend(f"{'':<4}  {'':<11} {'':<{width}}       {line}" for line in fix_lines[1:])
        failed = sum(r.failed for r in self.results)
        lines.append("")
        lines.append(
            "all checks hold: ready to replicate"
            if not failed
            else f"{failed} check(s) failed: apply the fixes above and run check again"
        )
        return "\n".join(lines)
