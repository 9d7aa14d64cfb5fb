"""Command line: ``replicator run MODE``, ``check``, ``demo`` and friends."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg

from replicator import __version__, logs
from replicator.config import load_connection, load_extractor, load_filter
from replicator.connect import open_tunnels
from replicator.errors import ConfigError, ReplicatorError
from replicator.job import Job
from replicator.modes import MODES, runner

if TYPE_CHECKING:
    from replicator.metrics import MetricsServer

log = logging.getLogger("replicator")

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _add_config_args(p: argparse.ArgumentParser, destination: bool = True) -> None:
    p.add_argument("--source", required=True, metavar="FILE", help="source connection config (YAML)")
    if destination:
        p.add_argument("--destination", required=True, metavar="FILE", help="destination connection config")
    p.add_argument("--filter", metavar="FILE", help="filter config: which tables, columns, rows")
    p.add_argument("--extractor", metavar="FILE", help="extractor config: threads, chunking, per-table keys")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replicator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"replicator {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a replication mode")
    run.add_argument("mode", choices=list(MODES))
    _add_config_args(run)
    run.add_argument("--once", action="store_true", help="catch up once and exit (realtime, delta-snapshot)")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="forget earlier progress and copy everything again (snapshot, delta-snapshot)",
    )
    run.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")
    run.add_argument(
        "--metrics-port", type=_port, metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, logged)",
    )  # fmt: skip
    run.add_argument(
        "--metrics-host", metavar="HOST", help="address to serve metrics on (default 127.0.0.1; 0.0.0.0: all)"
    )

    status = sub.add_parser(
        "status", help="progress held in the destination (and, with --source, the slots' lag)"
    )
    status.add_argument("--destination", required=True, metavar="FILE", help="destination connection config")
    status.add_argument("--source", metavar="FILE", help="source connection config, to show the slots' state")

    demo = sub.add_parser("demo", help="local throwaway servers, sample data, a snapshot you can watch")
    demo.add_argument("--rows", type=int, default=200_000, help="rows in the largest sample table")
    demo.add_argument(
        "--seconds", type=float, default=20.0, help="how long the simulated shop writes changes"
    )
    demo.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    _add_handoff(sub)
    _add_check(sub)
    _add_verify(sub)
    _add_switchover(sub)
    capture = sub.add_parser(
        "install-ddl-capture",
        help="install the event triggers that put schema changes into the WAL (needs a superuser: "
        "rds_superuser on RDS)",
    )
    capture.add_argument("--source", required=True, metavar="FILE",
                         help="connection config of a superuser (the RDS master user) on the source database")
    capture.add_argument("--uninstall", action="store_true", help="remove them instead")
    for command in sub.choices.values():
        # Accepted after the command too (`run snapshot --log-level DEBUG`); SUPPRESS keeps the
        # one given before it when this one is absent.
        command.add_argument(
            "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help="DEBUG shows more"
        )
    return parser


def _add_handoff(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("handoff", help="turn `pulumi stack output --json` into a source connection config")
    p.add_argument(
        "--stack-outputs", required=True, metavar="FILE|-", help="the JSON outputs ('-': standard input)"
    )
    p.add_argument("--output", metavar="FILE", help="where to write the config (default: standard output)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check", help="check every prerequisite of the source (and destination); say how to fix each"
    )
    p.add_argument("--source", required=True, metavar="FILE", help="source connection config (YAML)")
    p.add_argument("--destination", metavar="FILE", help="destination connection config")
    p.add_argument("--filter", metavar="FILE", help="filter config: which tables, columns, rows")
    p.add_argument("--extractor", metavar="FILE", help="extractor config: per-table keys")
    p.add_argument(
        "--client-ip", metavar="ADDRESS", help="the address AWS sees the replicator as (default: detected)"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return port


def _serve_metrics(args: argparse.Namespace, job: Job) -> MetricsServer | None:
    """The metrics endpoint, bound before anything else runs (a busy port: exit 2, at once)."""
    from replicator import metrics

    cfg = job.extractor.value.metrics
    if args.metrics_port is not None:
        port, where = args.metrics_port, f"--metrics-port {args.metrics_port}"
    elif cfg.port is not None:
        port, where = cfg.port, f"{job.extractor.where('metrics', 'port')}: metrics.port"
    elif args.metrics_host is not None:
        raise ConfigError("--metrics-host: needs a port too: add --metrics-port PORT (or metrics.port in the "
                          "extractor config)")  # fmt: skip
    else:
        return None
    return metrics.serve(args.metrics_host or cfg.host, port, where)


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="compare every replicated row of source and destination (read only); exit 0 equal, 3 not",
    )
    _add_config_args(p)
    p.add_argument(
        "--max-rows", type=int, default=20, metavar="N", help="differing keys shown per table (default 20)"
    )


def _add_switchover(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "switchover",
        help="cut over to the destination while realtime streams: wait for a marker, set sequences, "
        "validate, verify, record",
    )
    _add_config_args(p)
    p.add_argument(
        "--timeout-s", type=float, default=120.0, metavar="S",
        help="how long to wait for the destination to reach the marker (default 120)",
    )  # fmt: skip
    p.add_argument("--no-verify", action="store_true", help="skip the row-for-row verification")
    p.add_argument("--drop-slot", action="store_true", help="drop the slots and publications at the end")
    p.add_argument(
        "--read-only-source", action="store_true",
        help="first make the source database read-only for new sessions (needs its owner)",
    )  # fmt: skip
    p.add_argument(
        "--terminate", action="store_true",
        help="with --read-only-source: end the sessions that can still write",
    )  # fmt: skip


def _load_job(args: argparse.Namespace) -> Job:
    return Job(
        source=load_connection(args.source, "source"),
        destination=load_connection(args.destination, "destination"),
        filter=load_filter(args.filter),
        extractor=load_extractor(args.extractor),
        once=getattr(args, "once", False),
        fresh=getattr(args, "fresh", False),
        progress=False if getattr(args, "no_progress", False) else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        if args.command == "run":
            job = _load_job(args)
            server = _serve_metrics(args, job)
            try:
                open_tunnels(("source", job.source.value), ("destination", job.destination.value))
                return runner(args.mode)(job)
            finally:
                if server is not None:
                    server.close()
        if args.command == "status":
            from replicator.status import render_status

            print(render_status(
                load_connection(args.destination, "destination"),
                load_connection(args.source, "source") if args.source else None,
            ))
            return 0
        if args.command == "demo":
            from replicator.demo import run_demo

            return run_demo(rows=args.rows, seconds=args.seconds, keep=args.keep)
        if args.command == "handoff":
            from replicator.handoff import run_handoff

            return run_handoff(args.stack_outputs, args.output, force=args.force)
        if args.command == "verify":
            from replicator.verify import run_verify

            job = _load_job(args)
            open_tunnels(("source", job.source.value), ("destination", job.destination.value))
            return run_verify(job, max_rows=args.max_rows)
        if args.command == "switchover":
            from replicator.switchover import Options, run_switchover

            if args.terminate and not args.read_only_source:
                print("error: --terminate needs --read-only-source", file=sys.stderr)
                return 2
            job = _load_job(args)
            open_tunnels(("source", job.source.value), ("destination", job.destination.value))
            return run_switchover(job, Options(
                timeout_s=args.timeout_s, verify=not args.no_verify, drop_slot=args.drop_slot,
                read_only_source=args.read_only_source, terminate=args.terminate,
            ))  # fmt: skip
        if args.command == "install-ddl-capture":
            from replicator.source.ddlinstall import run_install

            return run_install(load_connection(args.source, "source"), uninstall=args.uninstall)
        if args.command == "check":
            from replicator.check import run_check

            return run_check(args.source, args.destination, args.filter, args.extractor, args.client_ip)
        raise AssertionError(args.command)
    except ReplicatorError as e:
        print(f"error: {logs.mask(str(e))}", file=sys.stderr)
        return e.exit_code
    except psycopg.Error as e:
        # A database refused something we did not anticipate: say what it said, without a traceback
        # (use --log-level DEBUG for one).
        log.debug("database error", exc_info=True)
        print(f"error: database error: {logs.mask(str(e).strip())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
