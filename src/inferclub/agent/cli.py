"""Command line of `inference-club-agent`: run, check, detect, engines."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from inferclub.agent import __version__
from inferclub.agent.deep import deep_check
from inferclub.agent.detect import default_urls, detect, probe_url, render_manifest
from inferclub.agent.manifest import Manifest, ManifestError, load_manifest
from inferclub.agent.runner import PROBE_TIMEOUT, RunConfig, main_run, parse_listen
from inferclub.agent.services import ServiceTable
from inferclub.engines import Engine, engine_sources, get_engines, get_plugin_manager
from inferclub.signing import SigningError, canonical_key, default_known_hubs_path

EXIT_USAGE = 2
DEFAULT_LISTEN = "0.0.0.0:8002"
KEY_ENV = "INFERCLUB_API_KEY"
METRICS_TOKEN_ENV = "INFERCLUB_AGENT_METRICS_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-club-agent",
        description="Advertise local inference servers to an inferclub hub and serve its requests.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--manifest", required=True, metavar="FILE", help="the manifest (YAML)")
    run.add_argument("--hub", metavar="URL", help="the hub's base URL (or agent.hub)")
    run.add_argument("--key", metavar="KEY", help=f"the hub API key (or ${KEY_ENV}, or agent.key)")
    run.add_argument("--name", help="provider name shown by the hub (default: host name)")
    run.add_argument(
        "--listen", metavar="HOST:PORT", help=f"callback server address (default {DEFAULT_LISTEN})"
    )
    run.add_argument(
        "--callback-url",
        metavar="URL",
        help="URL the hub uses to reach this agent (default http://HOST:PORT/v1)",
    )
    run.add_argument(
        "--heartbeat-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between heartbeats (default: what the hub asks for, else 30)",
    )
    run.add_argument(
        "--hub-key",
        metavar="ed25519:KEY",
        help="trust only this hub signing key (or agent.hub_key; default: pin the first seen)",
    )
    run.add_argument(
        "--known-hubs",
        metavar="FILE",
        help=f"where first-seen hub keys are pinned (default {default_known_hubs_path()})",
    )
    run.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help=f"serve /metrics on the callback server to this bearer token (or ${METRICS_TOKEN_ENV},"
        " or agent.metrics_token; default: no /metrics there)",
    )
    run.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve only /metrics on this separate address (or agent.metrics_listen)",
    )
    run.add_argument(
        "--tunnel",
        action="store_true",
        help="dial the hub and take requests over that connection: no port to open, works "
        "behind NAT (or agent.tunnel: true); the callback server listens on loopback only",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log debug details")

    check = sub.add_parser(
        "check", help="validate a manifest and probe its services, without the hub"
    )
    check.add_argument("--manifest", required=True, metavar="FILE")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument(
        "--deep",
        action="store_true",
        help="also send one tiny real request to each service that is up",
    )

    det = sub.add_parser("detect", help="find local engines and print a manifest for them")
    det.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="probe this server root instead of the default local ports (repeatable)",
    )
    det.add_argument(
        "--probe",
        action="append",
        metavar="HOST:PORT",
        help="probe this address instead of the default local ports (repeatable)",
    )

    sub.add_parser("engines", help="list the installed engines")
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("tornado.access").setLevel(logging.WARNING)


def load_or_exit(path: str, engines: Mapping[str, Engine]) -> Manifest:
    try:
        return load_manifest(path, engines)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        print("inference-club-agent: invalid manifest, nothing started", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def usage_error(message: str) -> SystemExit:
    print(f"inference-club-agent: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def cmd_run(args: argparse.Namespace, engines: Mapping[str, Engine]) -> int:
    setup_logging(args.verbose)
    manifest = load_or_exit(args.manifest, engines)
    section = manifest.agent
    hub = args.hub or section.hub
    if not hub:
        raise usage_error("no hub URL: pass --hub or set agent.hub in the manifest")
    key = args.key or os.environ.get(KEY_ENV) or section.key
    if not key:
        raise usage_error(f"no API key: pass --key, set {KEY_ENV}, or set agent.key")
    try:
        host, port = parse_listen(args.listen or section.listen or DEFAULT_LISTEN)
    except ValueError as exc:
        raise usage_error(f"--listen: {exc}") from None
    interval = (
        args.heartbeat_interval
        if args.heartbeat_interval is not None
        else section.heartbeat_interval
    )
    if interval is not None and interval <= 0:
        raise usage_error("--heartbeat-interval must be positive")
    hub_key = args.hub_key or section.hub_key
    if hub_key:
        try:
            hub_key = canonical_key(hub_key)
        except SigningError as exc:
            raise usage_error(f"--hub-key: {exc}") from None
    metrics_listen = args.metrics_listen or section.metrics_listen
    try:
        metrics_address = parse_listen(metrics_listen) if metrics_listen else None
    except ValueError as exc:
        raise usage_error(f"--metrics-listen: {exc}") from None
    config = RunConfig(
        manifest=manifest,
        hub=hub,
        key=key,
        name=args.name or section.name or socket.gethostname(),
        listen_host=host,
        listen_port=port,
        callback_url=args.callback_url or section.callback_url,
        heartbeat_interval=interval,
        hub_key=hub_key or None,
        known_hubs=Path(args.known_hubs) if args.known_hubs else None,
        metrics_token=args.metrics_token
        or os.environ.get(METRICS_TOKEN_ENV)
        or section.metrics_token
        or "",
        metrics_listen=metrics_address,
        tunnel=args.tunnel or section.tunnel,
    )
    return main_run(config, engines)


async def _probe_manifest(
    manifest: Manifest, engines: Mapping[str, Engine], deep: bool
) -> tuple[ServiceTable, dict[str, str]]:
    """Probe every service; with ``deep``, then send each one that is up a tiny request."""
    table = ServiceTable(manifest.services, engines)
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await table.probe_all(session)
        if not deep:
            return table, {}
        states = [st for st in table.states.values() if st.up]
        # One at a time: several models on one small machine would fight for it.
        results = {st.name: await deep_check(session, st) for st in states}
    return table, results


def cmd_check(args: argparse.Namespace, engines: Mapping[str, Engine]) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    manifest = load_or_exit(args.manifest, engines)
    table, deep = asyncio.run(_probe_manifest(manifest, engines, args.deep))
    rows: list[dict[str, Any]] = []
    for st in table.states.values():
        s = st.service
        rows.append(
            {
                "name": s.name,
                "host": s.host,
                "type": s.type,
                "engine": s.engine,
                "url": s.url,
                "features": list(s.features),
                "up": st.up,
                "detail": st.detail,
                "models": st.model_names(),
                "aliases": {m.alias: m.id for m in s.models if m.alias},
            }
        )
        if args.deep:
            rows[-1]["deep"] = deep.get(s.name, "skipped: service is down")
    down = [r for r in rows if not r["up"]]
    failed = [r for r in rows if r.get("deep", "").startswith("FAILED")]
    if args.json:
        print(json.dumps({"manifest": manifest.path, "services": rows}, indent=2))
        return 1 if down or failed else 0
    tried = f"; {len(failed)} failed a request" if args.deep else ""
    print(
        f"{manifest.path}: valid, {len(manifest.hosts)} host(s), {len(rows)} service(s); "
        f"{len(rows) - len(down)} up, {len(down)} down{tried}"
    )
    for host in manifest.hosts:
        print(f"\nhost {host.id}")
        for row in (r for r in rows if r["host"] == host.id):
            state = "up" if row["up"] else f"DOWN: {row['detail']}"
            features = f" [{', '.join(row['features'])}]" if row["features"] else ""
            print(f"  {row['name']}: {row['type']} via {row['engine']} at {row['url']}{features}")
            print(f"    status: {state}")
            if "deep" in row:
                print(f"    request: {row['deep']}")
            models = [
                f"{m} -> {row['aliases'][m]}" if m in row["aliases"] else m for m in row["models"]
            ]
            print(f"    models: {', '.join(models) if models else '(none)'}")
    return 1 if down or failed else 0


def cmd_detect(args: argparse.Namespace, engines: Mapping[str, Engine]) -> int:
    try:
        probes = [probe_url(p) for p in args.probe or ()]
    except ValueError as exc:
        raise usage_error(f"--probe: {exc}") from None
    urls = [*(args.url or ()), *probes] or default_urls(engines.values())
    found = asyncio.run(detect(engines, urls))
    if not found:
        print(f"no engine found at {', '.join(urls)}", file=sys.stderr)
        return 1
    sys.stdout.write(render_manifest(found))
    return 0


def cmd_engines(engines: Mapping[str, Engine], sources: Mapping[str, str]) -> int:
    for name, engine in engines.items():
        types = ", ".join(sorted(engine.service_types))
        print(f"{name:10} {sources.get(name, '?'):28} {types:32} {engine.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pm = get_plugin_manager()
    engines = get_engines(pm)
    if args.command == "run":
        return cmd_run(args, engines)
    if args.command == "check":
        return cmd_check(args, engines)
    if args.command == "detect":
        return cmd_detect(args, engines)
    return cmd_engines(engines, engine_sources(pm))
