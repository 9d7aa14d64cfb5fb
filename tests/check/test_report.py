"""The report a user reads, and the `replicator check` command's exit code."""

from __future__ import annotations

from pathlib import Path

from replicator.check.report import Report, fail, ok, skip, warn
from replicator.cli import main
from tests.check.conftest import Source


def test_render_lines_up_and_shows_every_fix_line() -> None:
    report = Report()
    report.add(ok("source", "connect", "connected"))
    report.add(fail("tables", "keys", "public.t has no primary key", "ALTER TABLE a;\nALTER TABLE b;"))
    report.add([warn("aws", "wal_sender_timeout", "60s"), skip("aws", "network acl", "no subnets")])
    assert report.render().splitlines() == [
        "ok    source      connect             connected",
        "FAIL  tables      keys                public.t has no primary key",
        "                                      fix: ALTER TABLE a;",
        "                                           ALTER TABLE b;",
        "warn  aws         wal_sender_timeout  60s",
        "skip  aws         network acl         no subnets",
        "",
        "1 check(s) failed: apply the fixes above and run check again",
    ]
    assert report.exit_code == 1


def test_only_failures_fail() -> None:
    report = Report([ok("a", "x", ""), warn("a", "y", ""), skip("a", "z", "")])
    assert report.ok and report.exit_code == 0
    assert report.render().endswith("all checks hold: ready to replicate")


def test_check_command(source: Source, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = source.write("cli-source.yaml", source.config())
    assert main(["check", "--source", str(path)]) == 0
    assert "all checks hold" in capsys.readouterr().out
    source.db.execute(f'REVOKE SELECT ON public.items FROM "{source.user}"')
    assert main(["check", "--source", str(path)]) == 1
    out = capsys.readouterr().out
    assert f'fix: GRANT SELECT ON "public"."items" TO "{source.user}";' in out


def test_check_command_with_a_bad_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text("type: POSTGRESQL\nhost: h\ndatabse: d\nusername: u\n")
    assert main(["check", "--source", str(path)]) == 2
    assert "databse: unknown key; did you mean 'database'?" in capsys.readouterr().err
