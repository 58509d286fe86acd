"""The ``inferclub`` command: ``serve``, ``users``, ``keys`` and ``config``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from inferclub import __version__
from inferclub.fdlimit import raise_nofile_limit
from inferclub.hub import collector, export, fallbacks, keys, workers
from inferclub.hub.accounts import AccountError, Accounts, link_base_url
from inferclub.hub.config import (
    ConfigError,
    Settings,
    config_reference,
    load_or_create_secrets,
    load_settings,
    setting_names,
)
from inferclub.hub.store import (
    RequestFilter,
    StoreError,
    User,
    describe_db,
    is_postgres_url,
    open_store,
)

if TYPE_CHECKING:
    import tornado.httpserver

    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub")


class CliError(Exception):
    pass


Command = Callable[[Accounts, Settings, argparse.Namespace], Awaitable[int]]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help="SQLite database file, or a postgresql://USER@HOST:PORT/DB URL"
        " (default: a SQLite file in the user data dir; $INFERCLUB_DB)",
    )
    p.add_argument("--config", help="YAML settings file ($INFERCLUB_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferclub", description="The inferclub hub: your own GPUs behind the OpenAI API."
    )
    parser.add_argument("--version", action="version", version=f"inferclub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub")
    _common(serve)
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8321)")
    serve.add_argument(
        "--online-window",
        type=float,
        dest="online_window",
        help="seconds a provider stays online after a heartbeat (default 60)",
    )
    serve.add_argument(
        "--workers",
        help="hub processes on the same port: a number, or `auto` for one per core (default 1)",
    )
    serve.add_argument(
        "--quickstart",
        action="store_true",
        help="on an empty database, create a local user and a key, and print next steps",
    )

    users = sub.add_parser("users", help="manage local users").add_subparsers(
        dest="action", required=True
    )
    u_create = users.add_parser("create", help="create a local user (no GitHub needed)")
    u_create.add_argument("login")
    _common(u_create)
    u_list = users.add_parser("list", help="list users")
    _common(u_list)
    u_link = users.add_parser("login-link", help="print a one-time dashboard sign-in link")
    u_link.add_argument("login")
    _common(u_link)

    keys_p = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    k_create = keys_p.add_parser(
        "create", help="create a key; it is printed once, on the last line"
    )
    k_create.add_argument("login")
    k_create.add_argument("--name", default="", help="a label for the key")
    k_create.add_argument(
        "--scope",
        choices=keys.SCOPES,
        default=keys.ALL,
        help="all: the OpenAI API and heartbeats (default); inference: the API only;"
        " agent: heartbeats only",
    )
    _common(k_create)
    k_list = keys_p.add_parser("list", help="list a user's keys by prefix")
    k_list.add_argument("login")
    _common(k_list)
    k_revoke = keys_p.add_parser("revoke", help="revoke a key (takes effect within a second)")
    k_revoke.add_argument("key", metavar="PREFIX_OR_ID")
    _common(k_revoke)
    k_rotate = keys_p.add_parser("rotate", help="revoke a key and print its replacement")
    k_rotate.add_argument("key", metavar="PREFIX_OR_ID")
    _common(k_rotate)

    models_p = sub.add_parser("models", help="a user's fallback models").add_subparsers(
        dest="action", required=True
    )
    m_fallback = models_p.add_parser(
        "fallback",
        help="serve FALLBACK when MODEL cannot be served now (a running hub sees it within "
        "registry_refresh seconds)",
    )
    m_fallback.add_argument("login")
    m_fallback.add_argument("model")
    m_fallback.add_argument("fallback", nargs="?", help="omit with --remove")
    m_fallback.add_argument("--remove", action="store_true", help="remove MODEL's fallback")
    _common(m_fallback)
    m_list = models_p.add_parser("fallbacks", help="list a user's fallback models")
    m_list.add_argument("login")
    _common(m_list)
    history = sub.add_parser("history", help="request history").add_subparsers(
        dest="action", required=True
    )
    h_export = history.add_parser(
        "export", help="print request history as CSV or JSON Lines, newest first"
    )
    h_export.add_argument(
        "--user", metavar="LOGIN", help="only this user's requests (default: all)"
    )
    h_export.add_argument(
        "--since", metavar="DATE", help="only requests from this date or ISO time (UTC) on"
    )
    h_export.add_argument("--format", choices=export.FORMATS, required=True)
    _common(h_export)

    config_p = sub.add_parser("config", help="about the hub's settings").add_subparsers(
        dest="action", required=True
    )
    config_p.add_parser(
        "docs", help="print the configuration reference (docs/configuration.md) as Markdown"
    )
    return parser


def setting_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Setting name -> its ``serve`` flag, read from the parser so the reference never lists
    a flag that does not exist."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    names = set(setting_names())
    return {
        a.dest: a.option_strings[0] for a in serve._actions if a.dest in names and a.option_strings
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "config":
        # Needs no settings: the reference documents the defaults, not this environment.
        sys.stdout.write(config_reference(setting_flags(parser)))
        return 0
    flags = {
        k: v
        for k, v in vars(args).items()
        if k in ("db", "config", "host", "port", "online_window", "workers")
    }
    try:
        settings = load_settings(flags)
        settings.metrics_address  # noqa: B018 - checked now, before anything starts
    except ConfigError as exc:
        print(f"inferclub: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return _serve(settings, args.quickstart)
        command: Command = {
            ("users", "create"): _users_create,
            ("users", "list"): _users_list,
            ("users", "login-link"): _users_login_link,
            ("keys", "create"): _keys_create,
            ("keys", "list"): _keys_list,
            ("keys", "revoke"): _keys_revoke,
            ("keys", "rotate"): _keys_rotate,
            ("models", "fallback"): _models_fallback,
            ("models", "fallbacks"): _models_fallbacks,
            ("history", "export"): _history_export,
        }[(args.command, args.action)]
        return asyncio.run(_with_store(settings, args, command))
    except (AccountError, CliError, ConfigError, StoreError) as exc:
        print(f"inferclub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings, quickstart: bool) -> int:
    try:
        count = workers.worker_count(settings.workers)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if count == 1:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(settings, quickstart=quickstart))
    sockets = _bind(settings)
    # Shared like the main port: each scrape reaches one worker (docs/operations.md).
    metrics_sockets = _bind_metrics(settings)
    load_or_create_secrets(settings.secrets_path)  # once, before the workers race for it
    from inferclub.hub.app import load_signer  # see serve()

    load_signer(settings)  # likewise the signing key: every worker signs with this one
    print(f"listening on {_url(settings.host, sockets)}", flush=True)
    if not is_postgres_url(settings.db_url):
        # SQLite cannot push a change to the other workers: reload providers often enough
        # that a heartbeat one worker saw routes from the others within a second.
        settings = dataclasses.replace(
            settings, registry_refresh=min(settings.registry_refresh, 0.5)
        )

    def worker(index: int, shared: list[socket.socket]) -> int:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            run = serve(settings, quickstart and index == 0, shared, index, metrics_sockets)
            return runner.run(run)

    try:
        return workers.run(count, sockets, worker)
    finally:
        for sock in metrics_sockets:
            sock.close()


def _bind(settings: Settings) -> list[socket.socket]:
    import tornado.netutil  # see serve()

    try:
        return tornado.netutil.bind_sockets(settings.port, settings.host)
    except OSError as exc:
        raise CliError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None


def _bind_metrics(settings: Settings) -> list[socket.socket]:
    """The sockets of the separate ``/metrics`` listener (none unless ``metrics_listen``)."""
    import tornado.netutil  # see serve()

    address = settings.metrics_address
    if address is None:
        return []
    try:
        sockets = tornado.netutil.bind_sockets(address[1], address[0])
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.metrics_listen}: {exc.strerror}") from None
    print(f"metrics on {_url(address[0], sockets)}/metrics", flush=True)
    return sockets


def _url(host: str, sockets: list[socket.socket]) -> str:
    port = sockets[0].getsockname()[1]
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (a default dependency on Linux and macOS): the event loop
    is about a quarter of the hub's CPU per request. Plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _with_store(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    store = open_store(settings.db_url)
    await store.open()
    try:
        # The secrets file is read only by commands that issue a key.
        accounts = Accounts(store, lambda: load_or_create_secrets(settings.secrets_path).pepper)
        return await command(accounts, settings, args)
    finally:
        await store.close()


async def _user(accounts: Accounts, login: str) -> User:
    user = await accounts.find_user(login)
    if user is None:
        raise CliError(f"no user {login!r}; create it with `inferclub users create {login}`")
    return user


async def _users_create(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    user = await accounts.create_user(args.login)
    print(f"created user {user.login} (id {user.id})")
    return 0


async def _users_list(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    for user in await accounts.store.list_users():
        print(f"{user.login}" + (f"  (github id {user.github_id})" if user.github_id else ""))
    return 0


async def _users_login_link(
    accounts: Accounts, settings: Settings, args: argparse.Namespace
) -> int:
    user = await _user(accounts, args.login)
    base = link_base_url(settings, settings.host, settings.port)
    link = await accounts.create_login_link(user.id, base, settings.login_link_ttl)
    minutes = settings.login_link_ttl / 60
    print(f"sign-in link for {user.login} (works once, expires in {minutes:g} min):")
    print(link)
    return 0


async def _print_login_link(accounts: Accounts, settings: Settings, host: str, port: int) -> None:
    """Without a GitHub app, the local admin signs in to the dashboard with a one-time link,
    the way Jupyter prints its token link. The admin is the first local user; on an empty
    database it is created when the link is first used, not before."""
    admin = await accounts.local_admin()
    link = await accounts.create_login_link(
        admin.id if admin else None,
        link_base_url(settings, host, port),
        settings.login_link_ttl,
    )
    who = f" as {admin.login}" if admin else ""
    # Like the other printed commands: it runs as printed, venv activated or not.
    again = f"{console_command('inferclub')} users login-link {admin.login if admin else 'LOGIN'}"
    print(
        f"Dashboard: sign in{who} with this link (works once, expires in "
        f"{settings.login_link_ttl / 60:g} min; `{again}{db_flag(settings)}` "
        f"prints another):\n    {link}",
        flush=True,
    )


async def _keys_create(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    user = await _user(accounts, args.login)
    new = await accounts.issue_key(user.id, args.name, args.scope)
    record = new.record
    print(
        f"created key {record.prefix}… (id {record.id}, scope {record.scope}) for {user.login};"
        " it is shown only once:"
    )
    print(new.secret)
    return 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


async def _keys_list(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    user = await _user(accounts, args.login)
    rows = await accounts.store.list_keys(user.id)
    print(
        f"{'ID':>4}  {'PREFIX':<12} {'NAME':<20} {'SCOPE':<9}  {'CREATED':<16}  "
        f"{'LAST USED':<16}  STATUS"
    )
    for k in rows:
        status = "active" if k.active else f"revoked {_when(k.revoked_at)}"
        print(
            f"{k.id:>4}  {k.prefix:<12} {k.name[:20]:<20} {k.scope:<9}  {_when(k.created_at):<16}  "
            f"{_when(k.last_used_at):<16}  {status}"
        )
    return 0


async def _keys_revoke(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    key = await accounts.active_key(args.key)
    if not await accounts.revoke_key(key.user_id, key.id):
        raise CliError(f"key {key.prefix} was revoked meanwhile")
    print(f"revoked key {key.prefix}… (id {key.id})")
    return 0


async def _keys_rotate(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    old = await accounts.active_key(args.key)
    new = await accounts.rotate_key(old.user_id, old.id)
    if new is None:
        raise CliError(f"key {old.prefix} was revoked meanwhile")
    print(
        f"revoked key {old.prefix}… (id {old.id}); its replacement {new.record.prefix}… "
        f"(id {new.record.id}) is shown only once:"
    )
    print(new.secret)
    return 0


async def _models_fallback(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    user = await _user(accounts, args.login)
    if args.remove:
        if not await accounts.store.delete_fallback(user.id, args.model):
            raise CliError(f"{user.login} has no fallback for {args.model!r}")
        print(f"removed the fallback of {args.model} for {user.login}")
        return 0
    if not args.fallback:
        raise CliError("name the FALLBACK model, or pass --remove")
    try:
        await fallbacks.set_fallback(accounts.store, user.id, args.model, args.fallback)
    except fallbacks.FallbackError as exc:
        raise CliError(str(exc)) from None
    print(f"{user.login}: {args.model} falls back to {args.fallback}")
    return 0


async def _models_fallbacks(
    accounts: Accounts, settings: Settings, args: argparse.Namespace
) -> int:
    user = await _user(accounts, args.login)
    for f in await accounts.store.list_fallbacks(user.id):
        print(f"{f.model} -> {f.fallback}")
    return 0


async def _history_export(accounts: Accounts, settings: Settings, args: argparse.Namespace) -> int:
    try:
        since = export.parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    users = [await _user(accounts, args.user)] if args.user else await accounts.store.list_users()
    await export.write(accounts.store, users, RequestFilter(since=since), args.format, sys.stdout)
    return 0


async def serve(
    settings: Settings,
    quickstart: bool = False,
    sockets: list[socket.socket] | None = None,
    worker: int | None = None,
    metrics_sockets: list[socket.socket] | None = None,
) -> int:
    """Run one hub until SIGTERM; with ``sockets`` as worker ``worker`` of ``--workers``."""
    raise_nofile_limit(log)
    # Imported here, not at the top: the web application (every handler, aiohttp, Tornado's
    # server, the metrics) is most of the command's start-up time, and `users`, `keys` and
    # `config` never need it (the test suite runs them hundreds of times).
    from inferclub.hub.app import Hub

    store = open_store(settings.db_url)
    await store.open()
    # Whatever fails from here on (a port in use, a bad secrets file), the store's thread and
    # the hub's tasks are stopped, so the process exits instead of hanging.
    try:
        secrets = load_or_create_secrets(settings.secrets_path)
        hub = Hub(settings, store, secrets)
        await hub.start()
        collector.tune()  # after start-up loaded the registry (hub/collector.py)
        try:
            return await _run_server(hub, settings, quickstart, sockets, worker, metrics_sockets)
        finally:
            await hub.stop()
    finally:
        await store.close()


async def _run_server(
    hub: Hub,
    settings: Settings,
    quickstart: bool,
    sockets: list[socket.socket] | None,
    worker: int | None,
    metrics_sockets: list[socket.socket] | None = None,
) -> int:
    import tornado.httpserver  # see serve()

    from inferclub import metrics
    from inferclub.hub.app import make_app

    server = tornado.httpserver.HTTPServer(
        make_app(hub),
        xheaders=False,
        # Every route's default: the web routes' small limit, so a path no handler streams
        # (static files, anything unknown) cannot make the hub read more. The /v1 handlers
        # raise it for their request, after checking its headers (handlers/base.py).
        max_body_size=settings.max_web_body,
    )
    # Slow clients (slowloris) are cut by the application's deadlines, cheaper than Tornado's
    # (hub/app.py: _Deadlines). Tornado would wrap every header read in a timeout of its own.
    server.conn_params.header_timeout = None
    # Before "listening on": a supervisor may signal as soon as it sees that line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if sockets is None:
        sockets = _bind(settings)
    if metrics_sockets is None:
        metrics_sockets = _bind_metrics(settings)
    metrics_server = tornado.httpserver.HTTPServer(
        metrics.metrics_app(hub.metrics.registry, settings.metrics_token)
    )
    metrics_server.add_sockets(metrics_sockets)
    internal_server = _internal_server(hub, settings)
    server.add_sockets(sockets)
    url = _url(settings.host, sockets)
    if worker in (None, 0):
        log.info("inferclub %s, database %s", __version__, describe_db(settings.db_url))
        # Public, and what agents pin: hubs sharing one URL must all show the same key.
        log.info("signing requests to agents with %s", hub.signer.public_key)
    if worker is None:  # with workers, the parent printed it
        print(f"listening on {url}", flush=True)
    if worker in (None, 0):
        await _announce(hub, settings, quickstart, url, sockets[0].getsockname()[1])

    await stop.wait()

    log.info("shutting down: no new connections; draining %d in-flight requests", hub.inflight)
    hub.draining = True
    server.stop()
    metrics_server.stop()
    await _drain(hub, server, settings.drain_timeout)
    await hub.relay.tunnels.close_all("the hub is shutting down")
    internal_server.stop()
    log.info("stopped")
    return 0


def _internal_server(hub: Hub, settings: Settings) -> tornado.httpserver.HTTPServer:
    """This process's own internal listener (each worker its own port), before any tunnel
    can land here: its URL is what a tunnelled provider's row records."""
    import tornado.httpserver  # see serve()
    import tornado.netutil

    from inferclub.hub.internal import internal_app

    host, port = settings.internal_address
    server = tornado.httpserver.HTTPServer(
        internal_app(hub), max_body_size=settings.body_ceiling, xheaders=False
    )
    sockets = tornado.netutil.bind_sockets(port, host)
    server.add_sockets(sockets)
    hub.internal_url = _url(host, sockets)
    return server


async def _drain(hub: Hub, server: tornado.httpserver.HTTPServer, timeout: float) -> None:
    """Let in-flight requests finish for ``timeout`` seconds, then cut the rest (their
    streams end with an error event) and close every connection."""
    deadline = time.monotonic() + timeout
    while hub.inflight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if hub.inflight:
        log.warning("drain deadline reached with %d requests in flight; closing them", hub.inflight)
        hub.cut_streams()
        # A moment for the cut streams to send their final error event.
        settle = time.monotonic() + 1
        while hub.inflight > 0 and time.monotonic() < settle:
            await asyncio.sleep(0.01)
    await server.close_all_connections()
    # Closing a connection cancels its relay; give the handlers a moment to record the cut
    # before hub.stop() writes the last history rows.
    settle = time.monotonic() + 2
    while hub.inflight > 0 and time.monotonic() < settle:
        await asyncio.sleep(0.01)


async def _announce(hub: Hub, settings: Settings, quickstart: bool, url: str, port: int) -> None:
    """The quickstart and the sign-in link, printed once per hub (by its first worker)."""
    try:
        if quickstart:
            await _print_quickstart(hub.accounts, settings, url)
        if not settings.github_enabled:
            await _print_login_link(hub.accounts, settings, settings.host, port)
    except Exception as exc:  # noqa: BLE001 - a full disk must not stop a serving hub
        log.error(
            "the database refuses writes (%s: %s): serving from memory, cannot persist;"
            " no sign-in link printed",
            type(exc).__name__,
            exc,
        )


def console_command(name: str) -> str:
    """How to run this distribution's console script ``name`` from here: its bare name when
    that is on PATH, else its path in this hub's virtualenv (relative when inside the current
    directory), so the printed command runs as printed without activating the venv."""
    script = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return name
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script.absolute())


async def _print_quickstart(accounts: Accounts, settings: Settings, url: str) -> None:
    lines = ["", f"inferclub hub is up at {url}"]
    if await accounts.store.count_users() == 0:
        # The same user the printed sign-in link then signs in as.
        user = await accounts.local_admin(create=True)
        assert user is not None
        key = (await accounts.issue_key(user.id, "quickstart")).secret
        lines += [
            f"Created local user '{user.login}' and an API key (shown only this once):",
            f"    {key}",
        ]
    else:
        key = "<your key>"
        lines += await _lost_key_lines(accounts, settings, url)
    lines += [
        "Next steps:",
        "  1. A real model in one command: `make demo` in this repository (another terminal)",
        "     starts small real engines and an agent for them; for your own inference server",
        "     see docs/run-your-first-model.md.",
        "  2. Run an agent next to your inference server (see manifests/ for examples):",
        f"       INFERCLUB_API_KEY={key} {console_command('inference-club-agent')} run"
        f" --manifest manifests/llamacpp.yaml --hub {url}",
        "  3. Use the hub from any OpenAI client:",
        f'       OpenAI(base_url="{url}/v1", api_key="{key}")',
        "",
    ]
    print("\n".join(lines), flush=True)


def db_flag(settings: Settings) -> str:
    """The ``--db`` a printed command needs to reach this hub's database ("" for the default)."""
    if is_postgres_url(settings.db):
        return " --db <the hub's --db>"  # the URL may hold a password: not printed
    return f" --db {shlex.quote(settings.db)}" if settings.db else ""


async def _lost_key_lines(accounts: Accounts, settings: Settings, url: str) -> list[str]:
    """A restarted hub: the key printed on the first start is stored only as a hash, so say
    how to get a new one, for the user the sign-in link signs in as."""
    user = await accounts.local_admin() or next(iter(await accounts.store.list_users()), None)
    login = user.login if user else "LOGIN"
    db = db_flag(settings)
    where = "with the sign-in link below" if not settings.github_enabled else f"at {url}/"
    return [
        "This database already has users; their keys were shown once, when created, and the",
        f"hub keeps only their hashes. A new key for '{login}':",
        f"    {console_command('inferclub')} keys create {login}{db}",
        f"or in the dashboard (API keys), signed in {where}.",
    ]
