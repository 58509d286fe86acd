"""Hub settings: one frozen dataclass, filled from defaults, a YAML file, ``INFERCLUB_*``
environment variables and command-line flags, in that order of precedence (flags win)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from inferclub import wire
from inferclub.hub.store import is_postgres_url

ENV_PREFIX = "INFERCLUB_"
MB = 1024 * 1024


class ConfigError(ValueError):
    """A setting could not be read; the message names where it came from."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("inferclub", appauthor=False))


def _doc(help: str, default: str | None = None) -> dict[str, str]:
    """Field metadata for a setting: its help text and, when the raw default would mislead
    (an empty string that means "computed"), how the reference shows the default."""
    return {"help": help} if default is None else {"help": help, "default": default}


#: The bounds of a per-user request rate other than 0 (no limit): one request in about 12
#: days, and one a nanosecond (past them the wait between two is no number a timer takes).
MIN_REQUEST_RATE = 1e-6
MAX_REQUEST_RATE = 1e9
MAX_REQUEST_BURST = 1_000_000_000


@dataclass(frozen=True)
class Settings:
    """Every hub setting. Each has an ``INFERCLUB_<NAME>`` variable and a config-file key; the
    ``help`` metadata is the one description of a setting, printed by ``inferclub config docs``
    into docs/configuration.md."""

    host: str = field(default="127.0.0.1", metadata=_doc("Interface to bind."))
    port: int = field(
        default=8321,
        metadata=_doc(
            "TCP port. 0 picks a free one; the bound port is printed as "
            "`listening on http://HOST:PORT`."
        ),
    )
    db: str = field(
        default="",
        metadata=_doc(
            "SQLite database file, created (with its directory) when missing; or a PostgreSQL "
            "URL, `postgresql://USER@HOST:PORT/DB`, for hubs on several machines sharing one "
            "database (docs/operations.md).",
            "`inferclub.db` in the user data directory "
            "(usually `~/.local/share/inferclub/` on Linux)",
        ),
    )
    secrets_file: str = field(
        default="",
        metadata=_doc(
            "File holding the server secrets (API-key pepper, cookie secret), created with "
            "mode 0600 on first use. Kept out of the database on purpose: a leaked database "
            "alone cannot be used to test guessed keys. `INFERCLUB_PEPPER` replaces it. The "
            "hub's signing key is created beside it (`.secrets.json` -> `.hub-key.pem`).",
            "`<db>.secrets.json`, beside a SQLite database; with a PostgreSQL `db`, "
            "`inferclub.secrets.json` in the user data directory",
        ),
    )
    online_window: float = field(
        default=60.0,
        metadata=_doc(
            "A provider is online while its last heartbeat is younger than this many seconds."
        ),
    )
    heartbeat_interval: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds between heartbeats that the hub asks agents to use (sent in every "
            "heartbeat reply). Keep it well below `online_window`."
        ),
    )
    connect_timeout: float = field(
        default=10.0, metadata=_doc("Seconds allowed to open a connection to an agent.")
    )
    first_byte_timeout: float = field(
        default=300.0,
        metadata=_doc(
            "Seconds allowed from sending a request to an agent until its response headers "
            "(cold model loads are slow)."
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=_doc(
            "Providers a request may try, within `first_byte_timeout`, before it gets an "
            "error: a provider that cannot be reached, or answers 429, 502 or 503 before any "
            "byte reached the client, hands the request on to the next candidate."
        ),
    )
    cooldown: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a provider that failed (could not be reached, answered 502 or 503) is "
            "skipped; doubled on each further failure, up to 60 s. Then one request tries it, "
            "and a success clears it."
        ),
    )
    queue_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a request may wait when every provider of its model is at its "
            "`max_concurrency`; it goes to the first that frees up, in arrival order, or gets "
            "a 429 `all_providers_busy` with `Retry-After` after this."
        ),
    )
    max_queue_per_user: int = field(
        default=64,
        metadata=_doc(
            "Most requests of one user that may wait for a busy provider at once; one more "
            "gets a 429 `all_providers_busy` at once."
        ),
    )
    stream_keepalive: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a streamed chat or completion may wait for its first byte before the hub "
            "sends its 200 and `: keepalive` SSE comments (every 5 s at most) while the model "
            "loads; no failover to another provider after that. 0 turns it off."
        ),
    )
    idle_timeout: float = field(
        default=120.0,
        metadata=_doc(
            "Seconds allowed between two chunks of a response. A healthy stream has no "
            "total-time cap."
        ),
    )
    max_json_body: int = field(
        default=wire.DEFAULT_MAX_JSON_BODY, metadata=_doc("Largest JSON request body, in bytes.")
    )
    max_audio_body: int = field(
        default=wire.DEFAULT_MAX_AUDIO_BODY,
        metadata=_doc("Largest audio upload (transcriptions, translations), in bytes."),
    )
    max_image_body: int = field(
        default=wire.DEFAULT_MAX_IMAGE_BODY,
        metadata=_doc(
            "Largest image upload, per image, in bytes (an image edit takes up to 16 images "
            "and a mask)."
        ),
    )
    max_web_body: int = field(
        default=wire.DEFAULT_MAX_WEB_BODY,
        metadata=_doc(
            "Largest request body, in bytes, of any route outside `/v1` (sign-in, dashboard "
            "forms, unknown paths): a larger `Content-Length` is a 413 before the body is "
            "read, and a chunked body is cut there. The playground's inference endpoints "
            "take the `/v1` limits, after the session and XSRF checks."
        ),
    )
    max_heartbeat_body: int = field(
        default=256 * 1024,
        metadata=_doc(
            "Largest heartbeat body, in bytes (64 services of 1,024 models in all fit easily)."
        ),
    )
    max_providers_per_user: int = field(
        default=64,
        metadata=_doc(
            "Most providers one user may register; a heartbeat for another new name gets a "
            "429 `provider_limit_reached`. 0 means no limit."
        ),
    )
    max_probe_targets_per_user: int = field(
        default=16,
        metadata=_doc(
            "Most distinct callback addresses (host:port) the hub checks for one user's "
            "providers per minute. A heartbeat with a new address past it is accepted, but "
            "its reply says the address was not checked yet (`callback_reachable: null`): "
            "rotating callback URLs cannot turn the hub into a port scanner. 0 means no limit."
        ),
    )
    max_keys_per_user: int = field(
        default=100,
        metadata=_doc(
            "Most active API keys a user may hold; creating another on the dashboard gets a "
            "429 until one is revoked (`inferclub keys create` is not limited). 0 means no "
            "limit."
        ),
    )
    tunnel_ping_interval: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds between two pings on an agent's tunnel (`run --tunnel`). A tunnel that "
            "answers none for two intervals is closed and its provider taken offline at once."
        ),
    )
    internal_listen: str = field(
        default="127.0.0.1:0",
        metadata=_doc(
            "`HOST:PORT` where each hub process listens for requests other hub processes "
            "forward to the agents' tunnels it holds (`--workers`, several hubs on one "
            "PostgreSQL). Port 0: a free port per process, recorded in the store. Hubs on "
            "several machines need an address the others can reach; keep it off the internet "
            "(requests there must carry the hub's signature)."
        ),
    )
    tunnel_max_streams: int = field(
        default=1024,
        metadata=_doc(
            "Requests one agent's tunnel carries at once; past it a request goes to another "
            "provider, or gets a 502."
        ),
    )
    tunnel_max_per_user: int = field(
        default=100,
        metadata=_doc(
            "Tunnels one user may hold open at once, over all hub processes sharing the "
            "store (each agent dials one). A process counts its own open tunnels and the "
            "user's providers online through a tunnel another process holds (docs/"
            "operations.md says what that misses). Past it the upgrade gets a 429 "
            "`tunnel_limit_reached`: one tenant cannot exhaust the hub's connections. 0 "
            "means no limit."
        ),
    )
    tunnel_max_total: int = field(
        default=10000,
        metadata=_doc(
            "Tunnels one hub process holds open at once, all users together. Past it the "
            "upgrade gets a 503 `tunnel_capacity_reached` with `Retry-After`, and the agent "
            "retries later (or reaches another hub process). 0 means no limit."
        ),
    )
    heartbeat_min_interval: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds a provider must wait between two accepted heartbeats; a faster one gets a "
            "429 with `Retry-After`. 0 turns the check off."
        ),
    )
    max_concurrent_requests_per_user: int = field(
        default=64,
        metadata=_doc(
            "Most inference requests one user may have in flight through this hub; one more "
            "gets a 429 `rate_limit_exceeded` with `Retry-After` (while the user shares the "
            "hub, it first waits a second, and longer under a flood of them, and tries again). "
            "0 means no limit."
        ),
    )
    max_requests_per_second_per_user: float = field(
        default=100.0,
        metadata=_doc(
            "Most inference requests one user may begin a second through this hub process "
            "while it shares the hub (another user's request or heartbeat within 90 s, or "
            "`online_window` if longer; a user "
            "alone is never paced), in bursts of up to `request_burst_per_user`; a request "
            "beyond that waits for its slot (it is not refused). 0 means no limit; otherwise "
            "from 0.000001 to 1e9."
        ),
    )
    request_burst_per_user: int = field(
        default=100,
        metadata=_doc(
            "Inference requests one user may begin at once, before "
            "`max_requests_per_second_per_user` paces the rest; from 1 to 1e9."
        ),
    )
    header_timeout: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a client may take to send a request's headers, and may keep an idle "
            "connection open between requests; a slower one is disconnected."
        ),
    )
    body_timeout: float = field(
        default=600.0,
        metadata=_doc(
            "Seconds a client may take to send a whole request body (the largest upload on a "
            "slow line must fit); a slower one is disconnected."
        ),
    )
    drain_timeout: float = field(
        default=30.0,
        metadata=_doc("Seconds in-flight requests get to finish after SIGTERM or SIGINT."),
    )
    key_cache_refresh: float = field(
        default=0.5,
        metadata=_doc(
            "How often, in seconds, the hub checks the store for key changes made elsewhere "
            "(CLI, dashboard, another hub process): a revoked key stops working within this."
        ),
    )
    registry_refresh: float = field(
        default=5.0,
        metadata=_doc(
            "How often, in seconds, the hub reads from the store the providers heard from or "
            "changed since its last look, so several hub processes sharing one store route "
            "alike (each heartbeat reaches only one of them)."
        ),
    )
    history_flush_interval: float = field(
        default=1.0,
        metadata=_doc(
            "How often, in seconds, buffered request-history rows are written (in batches, "
            "never on the request path)."
        ),
    )
    history_retention_days: float = field(
        default=90.0,
        metadata=_doc(
            "Request-history rows older than this many days are deleted, in the background and "
            "in bounded batches. 0 keeps them forever."
        ),
    )
    workers: str = field(
        default="1",
        metadata=_doc(
            "Hub processes to run, pre-forked on the same port and sharing the store: a number, "
            "or `auto` for one per core. The parent prints `listening on` and passes SIGTERM "
            "on to all of them."
        ),
    )
    last_seen_flush_interval: float = field(
        default=2.0,
        metadata=_doc(
            "How often, in seconds, providers' last-seen times and health are written to the "
            "store (in batches). Routing uses the in-memory time of each heartbeat at once; "
            "only a changed description (callback URL, services, models) is written at once."
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=_doc(
            "Log level name (`DEBUG`, `INFO`, `WARNING`, `ERROR`). `DEBUG` also logs every "
            "successful request."
        ),
    )
    github_client_id: str = field(
        default="",
        metadata=_doc(
            "Client id of your GitHub OAuth app. With `github_client_secret`, enables "
            '"Sign in with GitHub" on the dashboard; without, `serve` prints one-time '
            "sign-in links instead.",
            "empty (no GitHub sign-in)",
        ),
    )
    github_client_secret: str = field(
        default="",
        metadata=_doc("That OAuth app's client secret. Prefer the environment variable.", "empty"),
    )
    github_url: str = field(
        default="https://github.com",
        metadata=_doc(
            "GitHub's web base URL (the authorize and token endpoints live under it): a "
            "GitHub Enterprise server's URL, or a fake in tests."
        ),
    )
    github_api_url: str = field(
        default="https://api.github.com",
        metadata=_doc(
            "GitHub's REST API base URL (`GET /user`); `https://HOST/api/v3` on GitHub Enterprise."
        ),
    )
    public_url: str = field(
        default="",
        metadata=_doc(
            "The hub's base URL as browsers see it, e.g. `https://hub.example.org`: builds "
            "the OAuth callback URL (`{public_url}/auth/github/callback`) and printed sign-in "
            "links. `https://` makes the session cookie `Secure` (and named "
            "`__Host-inferclub_session`); set it when a TLS proxy fronts the hub.",
            "empty (from each request's `Host`)",
        ),
    )
    callback_networks: str = field(
        default="",
        metadata=_doc(
            "Networks the hub may call back (a heartbeat's `callback_url`), comma-separated: "
            "CIDRs and the words `public`, `private` (RFC 1918, CGNAT, unique-local IPv6) and "
            "`loopback`. Link-local (cloud metadata), multicast, unspecified and reserved "
            "addresses are refused unless a listed CIDR covers them. Checked at every heartbeat "
            "that changes the URL and again at every connection (docs/callback-networks.md).",
            "`public` when `public_url` is `https://`, else `public, private, loopback`",
        ),
    )
    login_link_ttl: float = field(
        default=900.0,
        metadata=_doc("Seconds a one-time dashboard sign-in link stays valid."),
    )
    metrics_token: str = field(
        default="",
        metadata=_doc(
            "Bearer token that Prometheus presents to read `/metrics` on the hub's own port. "
            "Without it (and without `metrics_listen`), `/metrics` answers 404. Prefer the "
            "environment variable.",
            "empty (no `/metrics` on the main port)",
        ),
    )
    metrics_listen: str = field(
        default="",
        metadata=_doc(
            "`HOST:PORT` of a separate listener that serves only `/metrics` (needing "
            "`metrics_token` only if that is set too), e.g. `127.0.0.1:9321` for a local "
            "scraper. Port 0 picks a free one, printed as `metrics on http://HOST:PORT/metrics`.",
            "empty (no separate listener)",
        ),
    )
    #: Where the settings file was read from (informational; the file itself is not a setting).
    config: str = field(default="", metadata={"internal": True})

    def __post_init__(self) -> None:
        rate = self.max_requests_per_second_per_user
        if not (rate == 0 or MIN_REQUEST_RATE <= rate <= MAX_REQUEST_RATE):
            raise ConfigError(
                f"setting 'max_requests_per_second_per_user' is {rate!r}: use 0 for no limit, "
                f"or a rate from {MIN_REQUEST_RATE:g} to {MAX_REQUEST_RATE:g} a second"
            )
        if not 1 <= self.request_burst_per_user <= MAX_REQUEST_BURST:
            raise ConfigError(
                f"setting 'request_burst_per_user' is {self.request_burst_per_user!r}: "
                f"from 1 (one request may always begin) to {MAX_REQUEST_BURST:,}"
            )

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db else default_data_dir() / "inferclub.db"

    @property
    def db_url(self) -> str:
        """What the store opens: a ``postgresql://`` URL as given (a path would fold its
        ``//``), else the SQLite file's path."""
        return self.db if is_postgres_url(self.db) else str(self.db_path)

    @property
    def image_edit_body_limit(self) -> int:
        return wire.image_edit_body_limit(self.max_image_body)

    @functools.cached_property
    def body_ceiling(self) -> int:
        """The largest body a ``/v1`` route lets a client send: past every endpoint's own
        limit. The HTTP server's ``max_body_size`` is ``max_web_body``; the ``/v1`` handlers
        raise it to this for their request only, after the headers are checked. Cached:
        every API request reads it, and the settings never change."""
        return wire.body_ceiling(self.max_json_body, self.max_audio_body, self.max_image_body)

    @property
    def internal_address(self) -> tuple[str, int]:
        """``internal_listen`` as ``(host, port)``; ConfigError if malformed."""
        host, sep, port = self.internal_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"internal_listen: expected HOST:PORT, not {self.internal_listen!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as ``(host, port)``, None when unset; ConfigError if malformed."""
        if not self.metrics_listen:
            return None
        host, sep, port = self.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"metrics_listen: expected HOST:PORT, not {self.metrics_listen!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def github_enabled(self) -> bool:
        return bool(self.github_client_id and self.github_client_secret)

    @property
    def secrets_path(self) -> Path:
        if self.secrets_file:
            return Path(self.secrets_file)
        if is_postgres_url(self.db):
            # No file beside a database server. Hubs sharing one must share these secrets
            # too (copy the file, or set INFERCLUB_PEPPER), or keys made on one fail on another.
            return default_data_dir() / "inferclub.secrets.json"
        return self.db_path.with_name(self.db_path.name + ".secrets.json")


def _coerce(name: str, raw: Any, kind: Any, source: str) -> Any:
    try:
        if kind in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind in (float, "float"):
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if math.isnan(value):  # every comparison with it is false: no limit, silently
                raise ValueError
            return value
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting {name!r} has an invalid value {raw!r}") from None


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if not f.metadata.get("internal")]


REFERENCE_HEAD = """\
# Configuration

<!-- Generated by `inferclub config docs` from the settings in src/inferclub/hub/config.py.
     Do not edit by hand: change a setting's help there, then run
     `.venv/bin/inferclub config docs > docs/configuration.md`. -->

Every `inferclub` command (`serve`, `users`, `keys`) reads the hub's settings from, in increasing
order of precedence:

1. the defaults below;
2. a YAML file given with `--config FILE` or `INFERCLUB_CONFIG`: a mapping whose keys are the
   setting names (`-` may stand for `_`; an unknown key is an error);
3. `INFERCLUB_*` environment variables;
4. command-line flags, for the few settings that have one.

A value that cannot be read (a port that is not a number, a YAML error) stops the command with
exit status 2 and a message naming the file, variable or flag it came from.

"""

REFERENCE_TAIL = """
## Server secrets

The key pepper and the cookie secret live in `secrets_file`, created on first use with mode 0600.
Two environment variables replace the file, for deployments that keep secrets elsewhere:

- `INFERCLUB_PEPPER`: the pepper API keys are hashed with (`HMAC-SHA256(pepper, key)`).
  Changing it invalidates every API key.
- `INFERCLUB_COOKIE_SECRET`: signs dashboard cookies; read only when `INFERCLUB_PEPPER` is set,
  and defaults to it. Changing it signs everyone out of the dashboard.

The hub's Ed25519 signing key (it signs every request to an agent, [signing.md](signing.md))
is a third file beside the secrets file, `<secrets file without .secrets.json>.hub-key.pem`
(`inferclub.db.hub-key.pem`), created with mode 0600 on first start, also when the environment
variables above replace the secrets file. Replacing it changes the key that agents pinned.

## Example

```yaml
# hub.yaml: inferclub serve --config hub.yaml
port: 8321
online_window: 90
first_byte_timeout: 600
max_audio_body: 52428800
```

The same settings from the environment: `INFERCLUB_PORT=8321 INFERCLUB_ONLINE_WINDOW=90 ...`.
"""


def _shown_default(f: dataclasses.Field[Any]) -> str:
    if "default" in f.metadata:
        return str(f.metadata["default"])
    value = f.default
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and value >= MB and value % MB == 0:
        return f"`{value}` ({value // MB} MiB)"
    return f"`{value}`" if value != "" else "empty"


def config_reference(flags: Mapping[str, str]) -> str:
    """The Markdown configuration reference (docs/configuration.md), built from each setting's
    ``help`` metadata. ``flags`` maps setting names to their command-line flag; it comes from
    the CLI's parser so this module need not know it."""
    rows = [
        "| Setting (file key) | Flag | Environment variable | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for f in fields(Settings):
        if f.metadata.get("internal"):
            continue
        flag = f"`{flags[f.name]}`" if f.name in flags else "-"
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(
            f"| `{f.name}` | {flag} | `{ENV_PREFIX}{f.name.upper()}` | {_shown_default(f)} "
            f"| {meaning} |"
        )
    return REFERENCE_HEAD + "\n".join(rows) + "\n" + REFERENCE_TAIL


def _read_file(config_path: str, types: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a YAML config file, coerced to their types."""
    try:
        data = yaml.safe_load(Path(config_path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: expected a mapping of settings")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in types or name == "config":
            raise ConfigError(f"{config_path}: unknown setting {key!r}")
        values[name] = _coerce(name, raw, types[name], config_path)
    values["config"] = str(config_path)
    return values


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings. ``flags`` holds command-line values (``None`` means not given)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    types = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_path = flags.get("config") or env.get(ENV_PREFIX + "CONFIG", "")
    if config_path:
        values.update(_read_file(config_path, types))

    for name in setting_names():
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = _coerce(name, env[var], types[name], f"${var}")

    for name, raw in flags.items():
        if name in types:
            values[name] = _coerce(name, raw, types[name], f"--{name.replace('_', '-')}")
    return dataclasses.replace(Settings(), **values)


@dataclass(frozen=True)
class Secrets:
    pepper: bytes
    cookie_secret: str


def load_or_create_secrets(path: Path) -> Secrets:
    """Read the server secrets, creating them (mode 0600) on first use.

    The pepper lives outside the database on purpose: a leaked database alone does not let
    anyone test guessed keys.
    """
    if env_pepper := os.environ.get(ENV_PREFIX + "PEPPER"):
        cookie = os.environ.get(ENV_PREFIX + "COOKIE_SECRET") or env_pepper
        return Secrets(pepper=env_pepper.encode(), cookie_secret=cookie)
    try:
        data = json.loads(path.read_text())
        return Secrets(pepper=bytes.fromhex(data["pepper"]), cookie_secret=data["cookie_secret"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable secrets file ({exc})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"pepper": secrets.token_hex(32), "cookie_secret": secrets.token_hex(32)}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    try:
        # Another process may have won the race; keep whichever file landed first.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return load_or_create_secrets(path)
