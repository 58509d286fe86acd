"""Hub settings: one frozen dataclass, filled from defaults, a YAML file, ``INFERCLUB_*``
environment variables and command-line flags, in that order of precedence (flags win)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from inferclub.hub.store import is_postgres_url

ENV_PREFIX = "INFERCLUB_"
MB = 1024 * 1024


class ConfigError(ValueError):
    """A setting could not be read; the message names where it came from."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("inferclub", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Every hub setting. Each has an ``INFERCLUB_<NAME>`` variable and a config-file key."""

    #: Interface to bind.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (the real one is printed as ``listening on ...``).
    port: int = 8321
    #: SQLite database file. Default: ``inferclub.db`` in the user's data directory.
    db: str = ""
    #: File holding the server secrets (key pepper, cookie secret). Default: beside the database.
    secrets_file: str = ""
    #: A provider is online while its last heartbeat is younger than this many seconds.
    online_window: float = 60.0
    #: Heartbeat interval the hub asks agents to use, in seconds.
    heartbeat_interval: float = 30.0
    #: Seconds allowed to open a connection to an agent.
    connect_timeout: float = 10.0
    #: Seconds allowed between sending a request to an agent and its response headers.
    first_byte_timeout: float = 300.0
    #: Seconds allowed between two chunks of a response. No cap on a healthy stream's total time.
    idle_timeout: float = 120.0
    #: Largest JSON request body, in bytes.
    max_json_body: int = 10 * MB
    #: Largest audio upload (transcriptions, translations), in bytes.
    max_audio_body: int = 25 * MB
    #: Largest image upload, per image, in bytes.
    max_image_body: int = 20 * MB
    #: Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    drain_timeout: float = 30.0
    #: How often the hub checks the store for key changes made elsewhere (revocations), seconds.
    key_cache_refresh: float = 0.5
    #: How often providers are reloaded from the store (heartbeats another hub instance
    #: sharing the store received), seconds.
    registry_refresh: float = 5.0
    #: How often buffered request-history rows are written, seconds.
    history_flush_interval: float = 1.0
    #: Log level name.
    log_level: str = "INFO"
    #: Client id of the GitHub OAuth app used for dashboard sign-in; empty: no GitHub sign-in.
    github_client_id: str = ""
    #: Client secret of that GitHub OAuth app (prefer the environment variable).
    github_client_secret: str = ""
    #: GitHub's web base URL (the authorize and token endpoints live under it).
    github_url: str = "https://github.com"
    #: GitHub's REST API base URL (``GET /user``).
    github_api_url: str = "https://api.github.com"
    #: The hub's public base URL as browsers see it: builds the OAuth callback URL and printed
    #: links; ``https://`` makes session cookies Secure. Default: from each request's Host.
    public_url: str = ""
    #: Seconds the one-time sign-in link printed by ``serve`` stays valid.
    login_link_ttl: float = 900.0
    #: Where the settings file was read from (informational).
    config: str = field(default="", metadata={"internal": True})

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db else default_data_dir() / "inferclub.db"

    @property
    def db_url(self) -> str:
        """What the store opens: a ``postgresql://`` URL as given (a path would fold its
        ``//``), else the SQLite file's path."""
        return self.db if is_postgres_url(self.db) else str(self.db_path)

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
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting {name!r} has an invalid value {raw!r}") from None


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if not f.metadata.get("internal")]


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
        try:
            data = yaml.safe_load(Path(config_path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{config_path}: cannot read config file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{config_path}: expected a mapping of settings")
        for key, raw in data.items():
            name = str(key).replace("-", "_")
            if name not in types or name == "config":
                raise ConfigError(f"{config_path}: unknown setting {key!r}")
            values[name] = _coerce(name, raw, types[name], config_path)
        values["config"] = str(config_path)

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
