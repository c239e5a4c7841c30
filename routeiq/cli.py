"""The ``routeiq`` command: ``serve``, ``check``, ``config reference``, ``statechart`` and
``events replay``.

Errors an operator can fix are printed as readable messages (never a traceback) with a
non-zero exit: 2 for invalid input (config, event log) and for usage errors (argparse's
convention), 1 when no command is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routeiq import __version__
from routeiq.assembly.checks import startup_problems
from routeiq.config.loader import load_config
from routeiq.config.reference import render_key_table, render_reference
from routeiq.config.source import read_config_text
from routeiq.errors import ConfigError, InvalidTransition
from routeiq.leadership.publishable import LITERAL_SECRET_HINT, literal_secrets
from routeiq.lifecycle.events import read_jsonl
from routeiq.lifecycle.projections import replay, split_runs
from routeiq.lifecycle.statechart import Statechart
from routeiq.master import parse_workers
from routeiq.observability.tracing import otlp_problems
from routeiq.serve import serve

__all__ = ["main"]

EXIT_INVALID = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    return int(args.run(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routeiq", description="The routeiq command.")
    parser.add_argument("--version", action="version", version=f"routeiq {_version()}")
    parser.set_defaults(command=None)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the gateway (hypercorn, RouteIQ owns the signals)")
    serve.add_argument(
        "--config", type=Path, help="YAML config (default: $ROUTEIQ_CONFIG or the embedded default)"
    )
    serve.add_argument("--host", default=os.environ.get("ROUTEIQ_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("ROUTEIQ_PORT", "4000")))
    serve.add_argument(
        "--workers",
        default=os.environ.get("ROUTEIQ_WORKERS", "1"),
        help="worker processes under a prefork master, or 'auto' for the usable CPUs "
        "(default: $ROUTEIQ_WORKERS or 1 = a single process, no master)",
    )
    serve.add_argument(
        "--master", action="store_true", help="run the master even for one worker (SIGHUP reload)"
    )
    serve.set_defaults(run=_serve)

    check = sub.add_parser(
        "check", help="validate a config file as serve would: prints OK or every error"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--strict",
        action="store_true",
        help="treat ignored LiteLLM keys as errors (exit 2)",
    )
    check.set_defaults(run=_check)

    config = sub.add_parser("config", help="config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    reference = config_sub.add_parser(
        "reference", help="print docs/configuration.md: every key, type, default, env override"
    )
    reference.set_defaults(run=_config_reference)
    keys = config_sub.add_parser(
        "litellm-keys", help="print the table of LiteLLM keys and what RouteIQ does with each"
    )
    keys.set_defaults(run=_litellm_keys)

    chart = sub.add_parser("statechart", help="print a statechart as Mermaid")
    chart.add_argument("name", nargs="?", default="gateway")
    chart.set_defaults(run=_statechart)

    events = sub.add_parser("events", help="work with saved event logs")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    replay = events_sub.add_parser("replay", help="rebuild the final state and startup timeline")
    replay.add_argument("file", type=Path)
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay.set_defaults(run=_replay)
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        workers = parse_workers(args.workers)
    except ConfigError as exc:
        print(f"routeiq: {exc.render()}", file=sys.stderr)
        return EXIT_INVALID
    return serve(
        bind=f"{args.host}:{args.port}",
        env=os.environ,
        config_path=args.config,
        workers=workers,
        master=args.master,
    )


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(os.environ, args.file)
        problems = startup_problems(config) + _deployment_problems(config, args.file)
        if args.strict:
            problems += list(config.warnings)
        if problems:
            raise ConfigError(sorted(set(problems)), source=str(args.file))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    for path, message in config.warnings:
        print(f"warning: {path}: {message}", file=sys.stderr)
    print(
        f"OK: {args.file} ({len(config.model_list)} deployments, "
        f"models: {', '.join(config.model_names)})"
    )
    return 0


def _deployment_problems(config: Any, path: Path) -> list[tuple[str, str]]:
    """What ``serve`` would refuse beyond the config itself: with the etcd backend, the literal
    secrets the leader refuses to publish (paths, never values); an OTLP endpoint set in the
    environment without the OTLP extra installed."""
    problems = list(otlp_problems(os.environ))
    if config.routeiq.leadership.backend == "etcd":
        # The text the leader publishes: the file as written, before env references resolve.
        text = read_config_text(path)
        problems += [(p, LITERAL_SECRET_HINT) for p in literal_secrets(text)]
    return problems


def _config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(render_reference())
    return 0


def _litellm_keys(args: argparse.Namespace) -> int:
    sys.stdout.write(render_key_table())
    return 0


def _version() -> str:
    return __version__


def _statechart(args: argparse.Namespace) -> int:
    try:
        chart = Statechart.load(args.name)
    except FileNotFoundError:
        print(f"routeiq: no statechart named {args.name!r}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(chart.to_mermaid())
    return 0


def _replay(args: argparse.Namespace) -> int:
    chart = Statechart.load("gateway")
    try:
        runs = split_runs(read_jsonl(args.file))
    except FileNotFoundError:
        print(f"routeiq: no such event log: {args.file}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"routeiq: unreadable event log: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not runs:
        print(f"routeiq: {args.file} holds no events", file=sys.stderr)
        return EXIT_INVALID
    results: list[tuple[Any, Any, dict[str, Any]]] = []
    for events in runs:
        try:
            state, projected = replay(chart, events)
        except (InvalidTransition, ValueError) as exc:
            first = events[0]
            print(
                f"routeiq: impossible event sequence for worker {first.worker_id} "
                f"(pid {first.pid}): {exc}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        status = state.status()
        results.append((events[0], status, projected.to_dict()))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "worker_id": first.worker_id,
                        "pid": first.pid,
                        "state": status.state,
                        "failed_phase": status.failed_phase,
                        "error": status.error,
                        "startup": timeline,
                    }
                    for first, status, timeline in results
                ],
                indent=2,
            )
        )
        return 0
    for first, status, timeline in results:
        print(f"worker {first.worker_id} (pid {first.pid}): final state {status.state}")
        if status.failed_phase or status.error:
            print(f"  failed in phase {status.failed_phase}: {status.error}")
        total = timeline["total_s"]
        print(f"  startup: {timeline['outcome']}" + ("" if total is None else f" in {total:.3f}s"))
        for phase in timeline["phases"]:
            print(
                f"    {phase['name']:<10} {phase['duration_s'] * 1000:10.1f} ms"
                + ("" if phase["ok"] else "  (failed)")
            )
            for comp in timeline["components"]:
                if comp["parent"] == phase["name"]:
                    mark = "" if comp["ok"] else f"  error: {comp['error']}"
                    print(f"      {comp['name']:<24} {comp['duration_s'] * 1000:10.1f} ms{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
