"""Dashboard sign-in: GitHub's OAuth web flow, one-time sign-in links, sessions, logout.

- GitHub: a random ``state`` bound to the browser by a signed cookie and kept (hashed, single
  use, 10 minutes) in the store together with the PKCE (S256) verifier; the code is exchanged
  with ``Accept: application/json``; ``GET /user`` carries the token in the ``Authorization``
  header only, and the token is dropped right after. Users are keyed by GitHub's numeric id.
- One-time links (local installs without a GitHub app): printed by ``inferclub serve``; each
  works once and expires.
- Sessions: a random token in a signed, HttpOnly, SameSite=Lax cookie (``Secure`` and
  ``__Host-`` over https); the store keeps its hash, so logging out ends it everywhere.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from inferclub.hub.config import Settings
from inferclub.hub.store import AlreadyExists, Store, User

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub.auth")

SESSION = "session"
LOGIN_LINK = "login_link"
OAUTH_STATE = "oauth_state"

SESSION_DAYS = 30
STATE_TTL = 600.0
STATE_COOKIE = "inferclub_oauth_state"
CALLBACK_PATH = "/auth/github/callback"
LINK_PATH = "/auth/link"


def new_token() -> str:
    """A 256-bit random secret, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_secure(settings: Settings) -> bool:
    return settings.public_url.lower().startswith("https://")


def local_base_url(settings: Settings, host: str, port: int) -> str:
    """The base URL printed links use: ``public_url``, else the bound address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


async def local_admin(store: Store, create: bool = False) -> User | None:
    """The local admin of a hub without GitHub: its first local (non-GitHub) user. With
    ``create``, one named after the OS user is created when there is none."""
    user = next((u for u in await store.list_users() if u.github_id is None), None)
    if user is None and create:
        login = re.sub(r"[^A-Za-z0-9._-]", "", getpass.getuser()) or "admin"
        try:
            user = await store.create_user(login)
        except AlreadyExists:
            user = await store.create_user(f"{login}-local")
    return user


async def create_login_link(store: Store, user_id: int | None, base_url: str, ttl: float) -> str:
    """A one-time sign-in URL for ``user_id`` (None: the local admin, created on first use),
    valid ``ttl`` seconds."""
    token = new_token()
    await store.create_auth_token(LOGIN_LINK, token_hash(token), user_id, time.time() + ttl)
    return f"{base_url.rstrip('/')}{LINK_PATH}?{urllib.parse.urlencode({'token': token})}"


def _safe_next(value: str | None) -> str:
    """Only same-site paths: never ``//host`` or ``https://host`` (open redirects)."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/dashboard"


# -- sessions ---------------------------------------------------------------------------------


def session_cookie_name(secure: bool) -> str:
    return "__Host-inferclub_session" if secure else "inferclub_session"


def request_is_secure(handler: tornado.web.RequestHandler, settings: Settings) -> bool:
    return is_secure(settings) or handler.request.protocol == "https"


async def session_user(handler: tornado.web.RequestHandler, hub: Hub) -> User | None:
    """The user signed in on this request's session cookie, or None."""
    name = session_cookie_name(request_is_secure(handler, hub.settings))
    raw = handler.get_signed_cookie(name, max_age_days=SESSION_DAYS)
    if not raw:
        return None
    token = await hub.store.get_auth_token(SESSION, token_hash(raw.decode()), time.time())
    if token is None or token.user_id is None:
        return None
    return await hub.store.get_user_by_id(token.user_id)


# -- GitHub -----------------------------------------------------------------------------------


class GitHubError(Exception):
    """GitHub refused the sign-in or could not be reached. ``status`` is what the browser gets."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class GitHubClient:
    """The three calls of GitHub's OAuth web flow, against configurable base URLs.

    Deliberately not Tornado's ``OAuth2Mixin.oauth2_request``: that puts the access token in
    the query string, which GitHub refuses and which leaks tokens into logs.
    """

    def __init__(self, settings: Settings) -> None:
        self.client_id = settings.github_client_id
        self._client_secret = settings.github_client_secret
        self.web_url = settings.github_url.rstrip("/")
        self.api_url = settings.github_api_url.rstrip("/")

    def authorize_url(self, redirect_uri: str, state: str, code_challenge: str) -> str:
        params = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": "",  # public profile only: the hub needs the id and the login
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "allow_signup": "true",
        }
        return f"{self.web_url}/login/oauth/authorize?{urllib.parse.urlencode(params)}"

    async def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> str:
        body = urllib.parse.urlencode(
            {
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        )
        data = await self._fetch(
            HTTPRequest(
                f"{self.web_url}/login/oauth/access_token",
                method="POST",
                body=body,
                headers={
                    "Accept": "application/json",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
        )
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            # GitHub answers 200 with {"error": "bad_verification_code", ...} for a bad code.
            reason = data.get("error_description") or data.get("error") or "no access token"
            raise GitHubError(f"GitHub did not accept the sign-in: {reason}", 400)
        return token

    async def get_user(self, access_token: str) -> tuple[int, str]:
        data = await self._fetch(
            HTTPRequest(
                f"{self.api_url}/user",
                headers={
                    "Authorization": f"Bearer {access_token}",
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
            )
        )
        gh_id, login = data.get("id"), data.get("login")
        if not isinstance(gh_id, int) or isinstance(gh_id, bool) or not isinstance(login, str):
            raise GitHubError("GitHub's /user answer has no numeric id and login.")
        return gh_id, login

    async def _fetch(self, request: HTTPRequest) -> dict[str, Any]:
        request.follow_redirects = False
        request.connect_timeout = request.request_timeout = 15
        request.user_agent = "inferclub"
        try:
            resp = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            raise GitHubError(f"GitHub answered HTTP {exc.code}.") from None
        except OSError as exc:
            raise GitHubError(f"GitHub is unreachable ({type(exc).__name__}).") from None
        try:
            data = json.loads(resp.body)
        except ValueError:
            raise GitHubError("GitHub's answer is not JSON.") from None
        if not isinstance(data, dict):
            raise GitHubError("GitHub's answer is not a JSON object.")
        return data


# -- handlers ---------------------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class WebHandler(tornado.web.RequestHandler):
    """Base of every browser-facing page: session-cookie auth, XSRF on (Tornado's default
    for the application), error pages without tracebacks, strict security headers."""

    current_user: User | None

    @property
    def hub(self) -> Hub:
        return self.application.settings["hub"]  # type: ignore[no-any-return]

    @property
    def secure(self) -> bool:
        return request_is_secure(self, self.hub.settings)

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        self.current_user = await session_user(self, self.hub)

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
        name = session_cookie_name(self.secure)
        if old := self.get_signed_cookie(name, max_age_days=SESSION_DAYS):
            await self.hub.store.delete_auth_token(SESSION, token_hash(old.decode()))
        token = new_token()
        await self.hub.store.create_auth_token(
            SESSION, token_hash(token), user.id, time.time() + SESSION_DAYS * 86400
        )
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
        name = session_cookie_name(self.secure)
        raw = self.get_signed_cookie(name, max_age_days=SESSION_DAYS)
        if raw:
            await self.hub.store.delete_auth_token(SESSION, token_hash(raw.decode()))
        self.clear_cookie(name, path="/", httponly=True, samesite="Lax", secure=self.secure)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = ""
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code != 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        if not hasattr(self, "current_user"):
            self.current_user = None  # the error happened before prepare()
        self.render("error.html", status=status_code, reason=self._reason, message=message)


class LoginHandler(WebHandler):
    async def get(self) -> None:
        nxt = _safe_next(self.get_query_argument("next", None))
        if self.current_user is not None:
            self.redirect(nxt)
            return
        self.render("login.html", next=nxt)


class GitHubLoginHandler(WebHandler):
    """Starts the OAuth web flow: state + PKCE, then off to GitHub's authorize page."""

    async def get(self) -> None:
        settings = self.hub.settings
        if not settings.github_enabled:
            raise tornado.web.HTTPError(404, "GitHub sign-in is not configured on this hub.")
        state, verifier = new_token(), new_token()
        data = json.dumps(
            {"verifier": verifier, "next": _safe_next(self.get_query_argument("next", None))}
        )
        await self.hub.store.create_auth_token(
            OAUTH_STATE, token_hash(state), None, time.time() + STATE_TTL, data
        )
        # Lax, not Strict: the browser must send it on the top-level redirect back from GitHub.
        self.set_signed_cookie(
            STATE_COOKIE,
            state,
            expires_days=STATE_TTL / 86400,
            path="/auth/github",
            httponly=True,
            samesite="Lax",
            secure=self.secure,
        )
        github = GitHubClient(settings)
        self.redirect(github.authorize_url(redirect_uri(self), state, pkce_challenge(verifier)))


def redirect_uri(handler: WebHandler) -> str:
    base = handler.hub.settings.public_url.rstrip("/") or (
        f"{handler.request.protocol}://{handler.request.host}"
    )
    return base + CALLBACK_PATH


class GitHubCallbackHandler(WebHandler):
    async def get(self) -> None:
        settings = self.hub.settings
        if not settings.github_enabled:
            raise tornado.web.HTTPError(404, "GitHub sign-in is not configured on this hub.")
        state = self.get_query_argument("state", "")
        cookie = self.get_signed_cookie(STATE_COOKIE, max_age_days=STATE_TTL / 86400)
        # Single use in this browser, whatever happens next.
        self.clear_cookie(
            STATE_COOKIE, path="/auth/github", httponly=True, samesite="Lax", secure=self.secure
        )
        if not state or not cookie or not hmac.compare_digest(state.encode(), cookie):
            raise tornado.web.HTTPError(
                400,
                "The sign-in state does not match this browser. Start again from the sign-in page.",
            )
        # Single use on the server too: a replayed callback (even with the cookie) finds nothing.
        record = await self.hub.store.consume_auth_token(
            OAUTH_STATE, token_hash(state), time.time()
        )
        if record is None:
            raise tornado.web.HTTPError(
                400, "This sign-in attempt expired or was already used. Start again."
            )
        if error := self.get_query_argument("error", ""):
            raise tornado.web.HTTPError(400, "GitHub sign-in did not complete (%s).", error)
        code = self.get_query_argument("code", "")
        if not code:
            raise tornado.web.HTTPError(400, "GitHub sent no authorization code.")
        data = json.loads(record.data)
        github = GitHubClient(settings)
        try:
            access_token = await github.exchange_code(code, data["verifier"], redirect_uri(self))
            gh_id, login = await github.get_user(access_token)
        except GitHubError as exc:
            log.warning("GitHub sign-in failed: %s", exc)
            raise tornado.web.HTTPError(exc.status, "%s", str(exc)) from None
        # The hub needs nothing else from GitHub: the access token is not kept anywhere.
        user = await self.hub.store.upsert_github_user(gh_id, login)
        log.info("user %s (github id %d) signed in", user.login, gh_id)
        await self.start_session(user)
        self.redirect(_safe_next(data.get("next")))


class LinkLoginHandler(WebHandler):
    """``/auth/link?token=...``: the one-time link ``inferclub serve`` prints."""

    async def get(self) -> None:
        token = self.get_query_argument("token", "")
        record = None
        if token:
            record = await self.hub.store.consume_auth_token(
                LOGIN_LINK, token_hash(token), time.time()
            )
        if record is None:
            raise tornado.web.HTTPError(
                400,
                "This sign-in link has expired or was already used. Get a new one with "
                "`inferclub users login-link LOGIN`.",
            )
        if record.user_id is None:
            user = await local_admin(self.hub.store, create=True)
        else:
            user = await self.hub.store.get_user_by_id(record.user_id)
        if user is None:
            raise tornado.web.HTTPError(400, "The user of this sign-in link no longer exists.")
        log.info("user %s signed in with a one-time link", user.login)
        await self.start_session(user)
        self.redirect("/dashboard")


class LogoutHandler(WebHandler):
    async def post(self) -> None:
        await self.end_session()
        self.redirect("/login")


routes = [
    (r"/login", LoginHandler),
    (r"/auth/github", GitHubLoginHandler),
    (CALLBACK_PATH, GitHubCallbackHandler),
    (LINK_PATH, LinkLoginHandler),
    (r"/logout", LogoutHandler),
]
