"""The hub's base handlers, all in one module.

- :class:`ApiHandler`: the ``/v1`` API and the agent protocol. The bearer key only (no
  cookies, so no XSRF), bodies counted against a limit as they arrive, every error an OpenAI
  error object.
- :class:`WebHandler`: browser pages. The signed session cookie, XSRF on (the application's
  default) with an Origin check, a small body read only after the headers passed
  (:mod:`.guard`), error pages without tracebacks, strict security headers.
- :class:`DashboardHandler` and :class:`DashboardApiHandler`: the signed-in user's pages and
  the small JSON endpoints they poll.

Services come from ``Application.settings["hub"]`` through the ``hub`` attribute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection

from inferclub import openai_errors, wire
from inferclub.hub import jsonbody, keys
from inferclub.hub.accounts import SESSION_DAYS
from inferclub.hub.config import Settings
from inferclub.hub.handlers import formatting, guard
from inferclub.hub.handlers.guard import DISCARD_FACTOR
from inferclub.hub.memory import release_dropped_body
from inferclub.hub.relay.meter import new_request_id
from inferclub.hub.store import KeyOwner, User
from inferclub.openai_errors import OpenAIError

if TYPE_CHECKING:
    from asyncio import Future

    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub.api")


def finish_json(handler: tornado.web.RequestHandler, data: Any, status: int = 200) -> None:
    """Finish ``handler``'s response with ``data`` as compact JSON."""
    handler.set_status(status)
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps(data, separators=(",", ":")))


def close_after_answer(request: tornado.httputil.HTTPServerRequest) -> None:
    """Close the connection once this answer is sent, and say so (``Connection: close``), so
    that a kept-alive client does not send its next request to a hub that is going away.
    Tornado decides this per request from the request's headers only; its connection's flag
    is the one switch (private, but the same in every Tornado 6 release)."""
    connection = request.connection
    if isinstance(connection, HTTP1Connection):
        connection._disconnect_on_finish = True  # noqa: SLF001


class HubHandler(tornado.web.RequestHandler):
    #: The hub's services: ``Application.settings["hub"]``, looked up once per request (a
    #: handler reads it a dozen times), before Tornado's constructor sets the default headers.
    hub: Hub

    def __init__(
        self,
        application: tornado.web.Application,
        request: tornado.httputil.HTTPServerRequest,
        **kwargs: Any,
    ) -> None:
        self.hub = application.settings["hub"]
        super().__init__(application, request, **kwargs)

    def set_default_headers(self) -> None:
        # Tornado's default names its version: a free hint for anyone matching CVEs.
        self.set_header("Server", "inferclub")
        if is_secure(self.hub.settings):
            self.set_header("Strict-Transport-Security", "max-age=31536000")

    def flush(self, include_footers: bool = False) -> Future[None]:
        # Checked at every flush, not when the request came in: an answer that was on its
        # way when the drain began must close its kept-alive connection too.
        if self.hub.draining:
            close_after_answer(self.request)
        return super().flush(include_footers)


# -- the API ----------------------------------------------------------------------------------


def shutting_down() -> OpenAIError:
    """The 503 of a request the hub will not begin because it is draining."""
    return OpenAIError(
        503,
        "The hub is shutting down; retry on a new connection.",
        "service_unavailable",
        "server_shutting_down",
        headers={"Retry-After": "1"},
    )


@tornado.web.stream_request_body
class ApiHandler(HubHandler):
    """Authenticates with ``Authorization: Bearer <key>`` only: cookies are ignored and XSRF
    does not apply. The body is streamed in so an oversize upload is refused with a 413 from
    its ``Content-Length`` before it is read, and counted while it arrives otherwise."""

    #: Largest body this endpoint accepts; ``None`` means the JSON limit.
    body_limit_setting = "max_json_body"

    #: The scope a key needs here (``inferclub.hub.keys``): the OpenAI API unless a subclass
    #: says otherwise; None lets any key through.
    required_scope: str | None = keys.INFERENCE

    owner: KeyOwner

    #: The id in ``X-Request-Id``; a proxied request replaces it with its history row's id.
    request_id: str = ""
    #: The provider last tried and how many were (``X-InferClub-Provider``, ``-Attempts``).
    provider_name: str = ""
    attempts: int = 0

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Here, not in prepare(): an error answer (sent after clear()) carries the id too,
        # including a refusal before the request was authenticated.
        if not self.request_id:
            self.request_id = new_request_id()
        self.set_header(wire.REQUEST_ID_HEADER, self.request_id)
        # An error answer (send_error clears the headers) still says which provider failed.
        if self.provider_name:
            self.set_header(wire.PROVIDER_HEADER, self.provider_name)
            self.set_header(wire.ATTEMPTS_HEADER, str(self.attempts))

    def check_xsrf_cookie(self) -> None:
        """Bearer-authenticated API: no cookies, so no XSRF."""

    def body_limit(self) -> int:
        return int(getattr(self.hub.settings, self.body_limit_setting))

    async def prepare(self) -> None:
        # The server's own cap is the web routes' small one; an API request may send up to
        # the largest endpoint limit, and each endpoint answers its oversize with its 413.
        connection: Any = self.request.connection
        connection.set_max_body_size(self.hub.settings.body_ceiling)
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._limit = self.body_limit()
        if self.hub.draining:
            raise shutting_down()
        self.owner = await self.authenticate()
        self.check_scope()
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._limit:
            # The agent is never contacted. A body up to a few times the limit is read and
            # dropped, so the client gets its 413 on a healthy connection instead of a reset
            # while it is still sending; anything larger is refused before it is read.
            if int(length) > DISCARD_FACTOR * self._limit:
                raise openai_errors.too_large(self._limit)
            self._too_large = True
            self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished or self._too_large:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    def on_connection_close(self) -> None:
        # Tornado's own handler fails the body future of a streamed request; the chunks
        # received so far are dropped here rather than when the garbage collector next finds
        # the handler's reference cycles, so an abandoned upload frees its memory at once,
        # and the allocator is asked to hand it back (hub/memory.py says why).
        super().on_connection_close()
        held = sum(len(chunk) for chunk in getattr(self, "_chunks", ()))
        self._chunks = []
        release_dropped_body(held)

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise openai_errors.too_large(self._limit)
        return b"".join(self._chunks)

    async def authenticate(self) -> KeyOwner:
        header = self.request.headers.get(wire.AUTH_HEADER, "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                "invalid_request_error",
                "missing_api_key",
            )
        owner = await self.hub.keys.authenticate(token.strip())
        if owner is None:
            raise openai_errors.invalid_key()
        return owner

    def check_scope(self) -> None:
        """A 403 ``insufficient_scope`` before the body is read when the key may not call
        this endpoint: a client app's key cannot heartbeat, an agent's key cannot infer."""
        needed = self.required_scope
        if needed is None or keys.allows(self.owner.scope, needed):
            return
        what = "send agent heartbeats" if needed == keys.AGENT else "call the OpenAI API"
        raise OpenAIError(
            403,
            f"This key has scope `{self.owner.scope}` and cannot {what}; use a key with "
            f"scope `{needed}` or `{keys.ALL}`.",
            "permission_error",
            "insufficient_scope",
        )

    def json_body(self) -> dict[str, Any]:
        raw = self.body
        if not raw:
            raise openai_errors.bad_request("The request body is empty; expected a JSON object.")
        try:
            data = jsonbody.loads(raw)
        except jsonbody.JSONBodyError as exc:
            raise openai_errors.bad_request(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise openai_errors.bad_request("The request body must be a JSON object.")
        return data

    def write_json(self, data: Any, status: int = 200) -> None:
        finish_json(self, data, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The one place the hub's API shapes an error: OpenAI's error object."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, OpenAIError):
            err = exc
        elif isinstance(exc, tornado.web.HTTPError):
            err = OpenAIError(
                exc.status_code,
                exc.log_message or self._reason,
                # Not type_for_status: Tornado's 401/403 (XSRF) have always been request errors.
                "invalid_request_error" if exc.status_code < 500 else "server_error",
            )
        else:
            err = OpenAIError(500, "The hub failed to handle this request.", "server_error")
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(err.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OpenAIError):
            level = logging.WARNING if value.status >= 500 else logging.DEBUG
            log.log(
                level,
                "%s %s -> %d %s",
                self.request.method,
                self.request.path,
                value.status,
                value.message,
            )
        else:
            super().log_exception(typ, value, tb)


class NotFoundHandler(ApiHandler):
    """Unknown ``/v1`` paths get an OpenAI-shaped 404, after authentication (any scope)."""

    required_scope = None

    async def prepare(self) -> None:
        await super().prepare()
        raise OpenAIError(
            404, f"Unknown endpoint {self.request.path}.", "invalid_request_error", "unknown_url"
        )


# -- browser pages ----------------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_secure(settings: Settings) -> bool:
    """The hub is served over https (behind a proxy that terminates TLS)."""
    return settings.public_url.lower().startswith("https://")


def request_is_secure(handler: tornado.web.RequestHandler, settings: Settings) -> bool:
    return is_secure(settings) or handler.request.protocol == "https"


def session_cookie_name(secure: bool) -> str:
    # __Host- makes browsers refuse the cookie unless Secure, Path=/ and without Domain.
    return "__Host-inferclub_session" if secure else "inferclub_session"


def xsrf_cookie_name(secure: bool) -> str:
    # __Host- as for the session: a sibling subdomain cannot plant a known XSRF token.
    return "__Host-inferclub_xsrf" if secure else "_xsrf"


def session_token(handler: tornado.web.RequestHandler, settings: Settings) -> str | None:
    """The session token in this request's signed cookie, if any."""
    name = session_cookie_name(request_is_secure(handler, settings))
    raw = handler.get_signed_cookie(name, max_age_days=SESSION_DAYS)
    return raw.decode() if raw else None


async def session_user(handler: tornado.web.RequestHandler, hub: Hub) -> User | None:
    """The user signed in on this request's session cookie, or None."""
    token = session_token(handler, hub.settings)
    return await hub.accounts.session_user(token) if token else None


def _error_message(status_code: int, exc: Any) -> str:
    """The message of a raised ``HTTPError``; never that of a 500, which may hold internals."""
    if isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code != 500:
        return exc.log_message % exc.args if exc.args else exc.log_message
    return ""


async def _no_submit(handler: tornado.web.RequestHandler, *args: str) -> None:
    raise tornado.web.HTTPError(405)


@tornado.web.stream_request_body
class WebHandler(HubHandler):
    """Base of every browser-facing page: session-cookie auth, XSRF on (Tornado's default
    for the application), error pages without tracebacks, strict security headers.

    The body is streamed so that everything in the headers is checked before any of it is
    read: its ``Content-Length`` (413 past ``max_web_body``), its ``Origin`` and XSRF cookie
    (403), and the session (:class:`DashboardHandler`). An XSRF token sent in a header or the
    query is checked then too; a form's ``_xsrf`` field is checked as soon as the (small) body
    is in, before the handler runs. So handlers implement :meth:`submit`, never ``post``.
    """

    current_user: User | None
    _xsrf_in_form = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "post" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides post(); implement submit() instead")

    @property
    def secure(self) -> bool:
        return request_is_secure(self, self.hub.settings)

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        """Tornado calls this before :meth:`prepare`, so before any body byte is read."""
        guard.check_origin(self.request, self.hub.settings.public_url)
        if self.request.headers.get("X-Xsrftoken") or self.get_query_argument("_xsrf", None):
            super().check_xsrf_cookie()
            return
        if not self.get_cookie(self.settings.get("xsrf_cookie_name", "_xsrf")):
            raise tornado.web.HTTPError(403, "'_xsrf' cookie missing: reload the page.")
        self._xsrf_in_form = True

    async def prepare(self) -> None:
        self.form = guard.FormBody(self.hub.settings.max_web_body)
        if self.form.refuse_early(self.request):
            raise tornado.web.HTTPError(413, "The request body is too large.")
        self.current_user = await session_user(self, self.hub)

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:
            self.form.add(chunk)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if hasattr(self, "form"):
            self.form.drop()

    async def post(self, *args: str) -> None:
        if self.form.too_large:
            raise tornado.web.HTTPError(413, "The request body is too large.")
        guard.parse_form(self.request, self.form.take())
        if self._xsrf_in_form:
            super().check_xsrf_cookie()
        result = self.submit(*args)
        if result is not None:
            await result

    #: Handles a ``POST`` once its form is read and its XSRF token checked; as for Tornado's
    #: ``post``, a handler declares the arguments its route captures.
    submit: Callable[..., Awaitable[None] | None] = _no_submit

    def get_template_namespace(self) -> dict[str, Any]:
        ns = super().get_template_namespace()
        ns.update(
            user=self.current_user,
            github_enabled=self.hub.settings.github_enabled,
            section="",
            xsrf_token=self.xsrf_token.decode(),
        )
        return ns

    async def start_session(self, user: User) -> None:
        """A new session (never a reused token), replacing any this browser had."""
        old = session_token(self, self.hub.settings)
        token = await self.hub.accounts.start_session(user.id, replacing=old)
        self.set_signed_cookie(
            session_cookie_name(self.secure),
            token,
            expires_days=SESSION_DAYS,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.secure,
        )

    async def end_session(self) -> None:
        if token := session_token(self, self.hub.settings):
            await self.hub.accounts.end_session(token)
        self.clear_cookie(
            session_cookie_name(self.secure),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.secure,
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not hasattr(self, "current_user"):
            self.current_user = None  # the error happened before prepare()
        self.render(
            "error.html",
            status=status_code,
            reason=self._reason,
            message=_error_message(status_code, exc),
        )


class NotFoundPage(WebHandler):
    """Any path no route matches (outside ``/v1``): a 404 page, after the body-size check."""

    async def prepare(self) -> None:
        await super().prepare()
        raise tornado.web.HTTPError(404)


# -- the dashboard ----------------------------------------------------------------------------


class DashboardHandler(WebHandler):
    """A page of the signed-in user's dashboard. Every query is scoped to ``user_id``, so
    another user's key, provider or request id is a 404."""

    section = ""

    async def prepare(self) -> None:
        await super().prepare()
        # Before the body: a change without a session is refused unread.
        if self.request.method not in guard.SAFE_METHODS and self.current_user is None:
            raise tornado.web.HTTPError(403, "Sign in to the dashboard first.")

    @property
    def user_id(self) -> int:
        assert self.current_user is not None
        return self.current_user.id

    def get_template_namespace(self) -> dict[str, Any]:
        ns = super().get_template_namespace()
        ns.update(
            section=self.section,
            iso=formatting.iso,
            utc=formatting.utc,
            ms=formatting.ms,
            usage=formatting.usage,
            json_script=formatting.json_script,
            hub_url=self.hub_url,
        )
        return ns

    @property
    def hub_url(self) -> str:
        """The hub's base URL as this browser reaches it, for snippets to copy."""
        return self.hub.settings.public_url.rstrip("/") or (
            f"{self.request.protocol}://{self.request.host}"
        )


class DashboardApiHandler(DashboardHandler):
    """Small JSON endpoints the pages poll: 401 instead of a redirect to the sign-in page."""

    async def prepare(self) -> None:
        await super().prepare()
        if self.current_user is None:
            raise tornado.web.HTTPError(401, "Sign in to the dashboard first.")

    def write_json(self, data: Any, status: int = 200) -> None:
        finish_json(self, data, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = _error_message(status_code, exc) or self._reason
        self.write_json(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status_code,
        )
