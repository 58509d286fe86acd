"""Loading and validating the agent manifest.

The YAML is read with a loader that remembers the line of every key and list item, so each
problem is reported as `FILE:LINE: FIELD: MESSAGE`, for example
`manifest.yaml:12: hosts[0].services[1].type: unknown type 'foo' (expected one of ...)`.
All problems are collected before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from inferclub.engines import SERVICE_TYPES, Engine, Model, Service
from inferclub.signing import SigningError, canonical_key

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

AGENT_FIELDS = (
    "name",
    "hub",
    "key",
    "listen",
    "callback_url",
    "heartbeat_interval",
    "hub_key",
    "metrics_token",
    "metrics_listen",
    "tunnel",
)
HOST_FIELDS = ("id", "services")
SERVICE_FIELDS = (
    "name",
    "type",
    "engine",
    "url",
    "models",
    "features",
    "api_key",
    "max_concurrency",
    "timeout",
    "options",
)
MODEL_FIELDS = ("id", "hf", "alias")


@dataclass(frozen=True)
class Problem:
    line: int | None
    field: str
    message: str


class ManifestError(Exception):
    """An invalid manifest. `str()` gives one `FILE:LINE: FIELD: MESSAGE` line per problem."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(
            f"{self.path}:{p.line}: {p.field}: {p.message}"
            if p.line
            else f"{self.path}: {p.field}: {p.message}"
            for p in self.problems
        )


@dataclass(frozen=True)
class AgentSection:
    """The manifest's optional `agent:` section: defaults for the command-line options."""

    name: str | None = None
    hub: str | None = None
    key: str | None = field(default=None, repr=False)
    listen: str | None = None
    callback_url: str | None = None
    heartbeat_interval: float | None = None
    #: The hub's signing key (``ed25519:...``), trusted instead of pinning the first one seen.
    hub_key: str | None = None
    #: Bearer token for /metrics on the callback server.
    metrics_token: str | None = field(default=None, repr=False)
    #: ``HOST:PORT`` of a listener serving only /metrics.
    metrics_listen: str | None = None
    #: Dial the hub and take requests over that tunnel instead of listening for callbacks.
    tunnel: bool = False


@dataclass(frozen=True)
class Host:
    id: str
    services: tuple[Service, ...]


@dataclass(frozen=True)
class Manifest:
    path: str
    agent: AgentSection
    hosts: tuple[Host, ...]

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(s for h in self.hosts for s in h.services)


# -- YAML with line numbers ------------------------------------------------------------------


class MarkedDict(dict[Any, Any]):
    """A YAML mapping that knows its own line and the line of each key."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[Any, int] = {}


class MarkedList(list[Any]):
    """A YAML sequence that knows its own line and the line of each item."""

    line: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.item_lines: list[int] = []


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _MarkedLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _MarkedLoader, node: yaml.MappingNode) -> Iterator[MarkedDict]:
    data = MarkedDict()
    data.line = node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in data.key_lines:
            raise _DuplicateKey(key, line, data.key_lines[key])
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line


def _construct_sequence(loader: _MarkedLoader, node: yaml.SequenceNode) -> Iterator[MarkedList]:
    data = MarkedList()
    data.line = node.start_mark.line + 1
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# -- validation --------------------------------------------------------------------------------


class _Checker:
    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = engines
        self.problems: list[Problem] = []

    def add(self, line: int | None, where: str, message: str) -> None:
        self.problems.append(Problem(line, where, message))

    def mapping(self, value: Any, line: int, where: str) -> MarkedDict | None:
        if not isinstance(value, MarkedDict):
            self.add(line, where, f"expected a mapping, got {_kind(value)}")
            return None
        return value

    def unknown_keys(self, data: MarkedDict, allowed: tuple[str, ...], where: str) -> None:
        for key in data:
            if key not in allowed:
                self.add(
                    data.key_lines[key],
                    _join(where, str(key)),
                    f"unknown field {key!r} (expected one of {', '.join(allowed)})",
                )

    def string(self, data: MarkedDict, key: str, where: str, required: bool = False) -> str | None:
        if key not in data or data[key] is None:
            if required:
                self.add(data.line, _join(where, key), "missing required field")
            return None
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.add(data.key_lines[key], _join(where, key), f"expected text, got {_kind(value)}")
            return None
        return value.strip()

    def url(self, data: MarkedDict, key: str, where: str, required: bool = False) -> str | None:
        value = self.string(data, key, where, required)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(data.key_lines[key], _join(where, key), f"not an http(s) URL: {value!r}")
            return None
        return value

    def number(self, data: MarkedDict, key: str, where: str, integer: bool = False) -> Any:
        if key not in data or data[key] is None:
            return None
        value = data[key]
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            wanted = "a positive integer" if integer else "a positive number"
            self.add(data.key_lines[key], _join(where, key), f"expected {wanted}, got {value!r}")
            return None
        return value

    # -- sections --

    def agent(self, data: MarkedDict) -> AgentSection:
        if "agent" not in data or data["agent"] is None:
            return AgentSection()
        section = self.mapping(data["agent"], data.key_lines["agent"], "agent")
        if section is None:
            return AgentSection()
        self.unknown_keys(section, AGENT_FIELDS, "agent")
        listen = self.address(section, "listen")
        metrics_listen = self.address(section, "metrics_listen")
        interval = self.number(section, "heartbeat_interval", "agent")
        hub_key = self.string(section, "hub_key", "agent")
        if hub_key is not None:
            try:
                hub_key = canonical_key(hub_key)
            except SigningError:
                self.add(
                    section.key_lines["hub_key"],
                    "agent.hub_key",
                    "expected ed25519:<43 base64url characters>, as GET /v1/agent/hub-key shows",
                )
                hub_key = None
        return AgentSection(
            name=self.string(section, "name", "agent"),
            hub=self.url(section, "hub", "agent"),
            key=self.string(section, "key", "agent"),
            listen=listen,
            callback_url=self.url(section, "callback_url", "agent"),
            heartbeat_interval=float(interval) if interval is not None else None,
            hub_key=hub_key,
            metrics_token=self.string(section, "metrics_token", "agent"),
            metrics_listen=metrics_listen,
            tunnel=self.flag(section, "tunnel", "agent"),
        )

    def flag(self, data: MarkedDict, key: str, where: str) -> bool:
        """A ``true``/``false`` field; false when absent."""
        value = data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.add(
                data.key_lines[key],
                _join(where, key),
                f"expected true or false, got {_kind(value)}",
            )
            return False
        return value

    def address(self, section: MarkedDict, key: str) -> str | None:
        """A ``HOST:PORT`` field of the agent section."""
        value = self.string(section, key, "agent")
        if value is not None and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):\d{1,5}$", value):
            self.add(section.key_lines[key], f"agent.{key}", f"expected HOST:PORT, got {value!r}")
            return None
        return value

    def hosts(self, data: MarkedDict) -> tuple[Host, ...]:
        if "hosts" not in data or data["hosts"] is None:
            self.add(data.line, "hosts", "missing required field")
            return ()
        hosts = data["hosts"]
        if not isinstance(hosts, MarkedList) or not hosts:
            self.add(data.key_lines["hosts"], "hosts", "expected a non-empty list of hosts")
            return ()
        seen_hosts: dict[str, int] = {}
        seen_services: dict[str, int] = {}
        result = []
        for i, (item, line) in enumerate(zip(hosts, hosts.item_lines, strict=True)):
            where = f"hosts[{i}]"
            host = self.mapping(item, line, where)
            if host is None:
                continue
            self.unknown_keys(host, HOST_FIELDS, where)
            host_id = self.string(host, "id", where, required=True)
            if host_id is not None:
                if host_id in seen_hosts:
                    self.add(
                        host.key_lines["id"],
                        f"{where}.id",
                        f"duplicate host id {host_id!r}"
                        f" (first defined at line {seen_hosts[host_id]})",
                    )
                seen_hosts.setdefault(host_id, host.key_lines["id"])
            services = self.services(host, where, host_id or "", seen_services)
            result.append(Host(host_id or "", services))
        return tuple(result)

    def services(
        self, host: MarkedDict, where: str, host_id: str, seen: dict[str, int]
    ) -> tuple[Service, ...]:
        if "services" not in host or host["services"] is None:
            self.add(host.line, f"{where}.services", "missing required field")
            return ()
        items = host["services"]
        if not isinstance(items, MarkedList) or not items:
            self.add(
                host.key_lines["services"],
                f"{where}.services",
                "expected a non-empty list of services",
            )
            return ()
        result = []
        for j, (item, line) in enumerate(zip(items, items.item_lines, strict=True)):
            service = self.service(item, line, f"{where}.services[{j}]", host_id, seen)
            if service is not None:
                result.append(service)
        return tuple(result)

    def service_name(self, data: MarkedDict, where: str, seen: dict[str, int]) -> str | None:
        """The service's name, checked: a valid name, and unique within the manifest."""
        name = self.string(data, "name", where, required=True)
        if name is None:
            return None
        line = data.key_lines["name"]
        if not SERVICE_NAME.match(name):
            message = f"invalid service name {name!r} (letters, digits, '.', '_' and '-' only)"
            self.add(line, f"{where}.name", message)
        elif name in seen:
            message = f"duplicate service name {name!r} (first defined at line {seen[name]})"
            self.add(line, f"{where}.name", message)
        else:
            seen[name] = line
        return name

    def service(
        self, item: Any, line: int, where: str, host_id: str, seen: dict[str, int]
    ) -> Service | None:
        data = self.mapping(item, line, where)
        if data is None:
            return None
        self.unknown_keys(data, SERVICE_FIELDS, where)

        name = self.service_name(data, where, seen)
        stype = self.string(data, "type", where) or "llm"
        if stype not in SERVICE_TYPES:
            self.add(
                data.key_lines["type"],
                f"{where}.type",
                f"unknown type {stype!r} (expected one of {', '.join(SERVICE_TYPES)})",
            )

        engine_name = self.string(data, "engine", where, required=True)
        engine = self.engines.get(engine_name) if engine_name else None
        if engine_name is not None and engine is None:
            self.add(
                data.key_lines["engine"],
                f"{where}.engine",
                f"unknown engine {engine_name!r} (installed: {', '.join(sorted(self.engines))})",
            )
        if engine is not None and stype in SERVICE_TYPES and stype not in engine.service_types:
            served = ", ".join(t for t in SERVICE_TYPES if t in engine.service_types)
            self.add(
                data.key_lines.get("type", data.line),
                f"{where}.type",
                f"engine {engine.name!r} does not serve {stype!r} (it serves {served})",
            )

        url = self.url(data, "url", where, required=True)
        models = self.models(data, where)
        features = self.features(data, where, engine)
        options = data.get("options") or MarkedDict()
        if (
            "options" in data
            and data["options"] is not None
            and not isinstance(options, MarkedDict)
        ):
            self.add(data.key_lines["options"], f"{where}.options", "expected a mapping")
            options = MarkedDict()
        api_key = self.string(data, "api_key", where)
        max_concurrency = self.number(data, "max_concurrency", where, integer=True)
        timeout = self.number(data, "timeout", where)

        if name is None or url is None or engine is None:
            return None
        service = Service(
            name=name,
            engine=engine.name,
            url=url,
            type=stype,
            models=models,
            features=features,
            api_key=api_key,
            max_concurrency=max_concurrency,
            timeout=float(timeout) if timeout is not None else None,
            options=dict(options),
            host=host_id,
        )
        for key, message in engine.check_service(service).items():
            self.add(self.line_of(data, key), f"{where}.{key}", message)
        return service

    def line_of(self, data: MarkedDict, dotted: str) -> int:
        """The line of a dotted field inside a service mapping (its parent's line if absent)."""
        node: Any = data
        line = data.line
        for part in dotted.split("."):
            if isinstance(node, MarkedDict) and part in node:
                line = node.key_lines[part]
                node = node[part]
            else:
                break
        return line

    def models(self, data: MarkedDict, where: str) -> tuple[Model, ...]:
        if "models" not in data or data["models"] is None:
            return ()
        items = data["models"]
        if not isinstance(items, MarkedList):
            self.add(data.key_lines["models"], f"{where}.models", "expected a list of models")
            return ()
        result: list[Model] = []
        names: dict[str, int] = {}
        for k, (item, line) in enumerate(zip(items, items.item_lines, strict=True)):
            mwhere = f"{where}.models[{k}]"
            if isinstance(item, str) and item.strip():
                model = Model(item.strip())
            else:
                mdata = self.mapping(item, line, mwhere)
                if mdata is None:
                    continue
                self.unknown_keys(mdata, MODEL_FIELDS, mwhere)
                mid = self.string(mdata, "id", mwhere)
                hf = self.string(mdata, "hf", mwhere)
                if (mid is None) == (hf is None):
                    self.add(mdata.line, mwhere, "give exactly one of `id:` or `hf:`")
                    continue
                model = Model(mid or hf or "", self.string(mdata, "alias", mwhere))
            if model.name in names:
                self.add(
                    line,
                    mwhere,
                    f"duplicate model name {model.name!r} (first at line {names[model.name]})",
                )
                continue
            names[model.name] = line
            result.append(model)
        return tuple(result)

    def features(self, data: MarkedDict, where: str, engine: Engine | None) -> tuple[str, ...]:
        if "features" not in data or data["features"] is None:
            return ()
        items = data["features"]
        if not isinstance(items, MarkedList) or not all(isinstance(f, str) for f in items):
            self.add(data.key_lines["features"], f"{where}.features", "expected a list of names")
            return ()
        for k, (feature, line) in enumerate(zip(items, items.item_lines, strict=True)):
            if engine is not None and feature not in engine.features:
                allowed = ", ".join(sorted(engine.features)) or "none"
                self.add(
                    line,
                    f"{where}.features[{k}]",
                    f"engine {engine.name!r} does not support feature {feature!r} "
                    f"(supported: {allowed})",
                )
        return tuple(items)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, MarkedDict):
        return "a mapping"
    if isinstance(value, MarkedList):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_manifest(text: str, path: str, engines: Mapping[str, Engine]) -> Manifest:
    """Validate manifest text; `path` is only used in messages. Raises `ManifestError`."""
    try:
        data = yaml.load(text, Loader=_MarkedLoader)
    except _DuplicateKey as exc:
        raise ManifestError(
            path, [Problem(exc.line, str(exc.key), f"duplicate key (first at line {exc.first})")]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "could not parse"
        raise ManifestError(path, [Problem(line, "(yaml)", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(path, [Problem(None, "(yaml)", f"invalid YAML: {exc}")]) from None
    checker = _Checker(engines)
    if not isinstance(data, MarkedDict):
        checker.add(1, "(top level)", f"expected a mapping with `hosts:`, got {_kind(data)}")
        raise ManifestError(path, checker.problems)
    checker.unknown_keys(data, ("agent", "hosts"), "")
    agent = checker.agent(data)
    hosts = checker.hosts(data)
    if checker.problems:
        raise ManifestError(path, sorted(checker.problems, key=lambda p: p.line or 0))
    return Manifest(path=path, agent=agent, hosts=hosts)


def load_manifest(path: str | Path, engines: Mapping[str, Engine]) -> Manifest:
    """Read and validate a manifest file. Raises `ManifestError` (also for unreadable files)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(name, [Problem(None, "(file)", f"cannot read: {exc}")]) from None
    return parse_manifest(text, name, engines)
