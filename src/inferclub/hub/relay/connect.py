"""Reaching the agent: the route's URL, the upstream request, and what its failures tell the
client (OpenAI-shaped errors with a 502 or 504 status)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from inferclub import signing, wire
from inferclub.fdlimit import out_of_descriptors
from inferclub.hub.routing import Route
from inferclub.hub.tunnels import AgentFailedStream, unreachable
from inferclub.openai_errors import OpenAIError


class UpstreamBody(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class UpstreamResponse(Protocol):
    """An agent's answer as the relay reads it: an aiohttp response, or a stream on the
    agent's tunnel (:class:`~inferclub.hub.tunnels.TunnelResponse`). Reading the body raises
    an ``OSError`` (or ``aiohttp.ClientError``) when the connection breaks."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> UpstreamBody: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content_type(self) -> str: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    """Seconds to connect, to the response headers, and between two chunks of the body."""

    connect: float
    first_byte: float
    idle: float


@dataclass(frozen=True)
class Upstream:
    """Where a request goes and the headers that go with it."""

    url: str
    headers: dict[str, str]
    #: The provider's name, for error messages (the client sees it in X-InferClub-Provider).
    provider: str = ""
    provider_id: int = 0
    #: The agent dialled in: the request goes through its tunnel, not to ``url``.
    tunnel: bool = False

    @property
    def who(self) -> str:
        return f"provider `{self.provider}`" if self.provider else "the provider"

    @property
    def target(self) -> str:
        """The signed request target (path and query), as the agent sees it."""
        return signing.request_target(self.url)

    @classmethod
    def for_route(
        cls,
        route: Route,
        api_path: str,
        content_type: str,
        request_id: str,
        signer: signing.HubSigner,
        body: bytes,
    ) -> Upstream:
        """``api_path`` (``/v1/...``) on the route's agent, signed for the route's provider
        (docs/signing.md): the consumer's key never travels to an agent. Signed here, once
        per request: the body is whole by now, and no chunk of the answer costs a signature."""
        provider = route.provider
        url, target = _url_and_target(provider.callback_url, api_path)
        service = route.service.name
        signed = signer.sign("POST", target, request_id, str(provider.id), body, service=service)
        return cls(
            url=url,
            headers={
                "Content-Type": content_type,
                wire.SERVICE_HEADER: service,
                **signed,
            },
            provider=provider.name,
            provider_id=provider.id,
            tunnel=provider.transport == "tunnel",
        )


@functools.lru_cache(maxsize=4096)
def _url_and_target(callback_url: str, api_path: str) -> tuple[str, str]:
    """``api_path`` (``/v1/...``) on an agent's callback URL, and its signed request target.
    Cached: the same for every request to a route, and yarl's parse of the URL is not free."""
    url = callback_url.rstrip("/") + api_path[len("/v1") :]
    return url, signing.request_target(url)


async def open_upstream(
    session: aiohttp.ClientSession,
    timeouts: Timeouts,
    upstream: Upstream,
    body: bytes,
    first_byte: float | None = None,
) -> aiohttp.ClientResponse:
    """POST ``body`` and wait for the response headers, at most ``first_byte`` seconds
    (default ``timeouts.first_byte``)."""
    if first_byte is None:
        first_byte = timeouts.first_byte
    try:
        async with asyncio.timeout(first_byte):
            return await session.post(
                upstream.url, data=body, headers=upstream.headers, allow_redirects=False
            )
    except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError):
        raise OpenAIError(
            504,
            f"Could not connect to {upstream.who} within {timeouts.connect:g} s.",
            "server_error",
            "upstream_timeout",
        ) from None
    except TimeoutError:
        raise no_answer(upstream, first_byte) from None
    except (aiohttp.ClientError, OSError) as exc:
        if out_of_descriptors(exc):
            raise hub_overloaded() from None
        raise unreachable(upstream.who, _reason(exc)) from None


def no_answer(upstream: Upstream, seconds: float) -> OpenAIError:
    return OpenAIError(
        504,
        f"No answer from {upstream.who} within {seconds:g} s.",
        "server_error",
        "upstream_timeout",
    )


def _reason(exc: BaseException) -> str:
    """Why a connection to an agent failed, in words: aiohttp's class names
    (``ClientConnectorError``) tell a client nothing."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection"
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    errno = getattr(os_error, "errno", None)
    if isinstance(errno, int) and errno:
        return os.strerror(errno).lower()
    return "connection failed"


def hub_overloaded() -> OpenAIError:
    """The hub itself ran out of file descriptors: its fault, never the agent's."""
    return OpenAIError(
        503,
        "The hub is overloaded (out of file descriptors); retry shortly.",
        "service_unavailable",
        "hub_overloaded",
        headers={"Retry-After": "1"},
    )


def upstream_broke(exc: BaseException) -> OpenAIError:
    """The agent's connection failed while its answer was on its way."""
    # No exception text or class name: a client reads this inside its stream, and aiohttp's
    # ("Response payload is not completed: <TransferEncodingError ...>") tells it nothing.
    if isinstance(exc, AgentFailedStream):
        return exc.error  # the agent said why (shutting down, its engine failed)
    return OpenAIError(
        502,
        "The connection to the provider broke before the answer was complete.",
        "server_error",
        "upstream_error",
    )


def upstream_idle(seconds: float) -> OpenAIError:
    """The agent sent nothing for the idle timeout while its answer was on its way."""
    return OpenAIError(
        504,
        f"The provider sent nothing for {seconds:g} s; the stream was closed.",
        "server_error",
        "upstream_timeout",
    )
