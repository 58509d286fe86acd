"""Dashboard sign-in: GitHub's OAuth web flow, one-time sign-in links, logout.

- GitHub: a random ``state`` bound to the browser by a signed cookie and kept (hashed, single
  use, 10 minutes) in the store together with the PKCE (S256) verifier; the code is exchanged
  with ``Accept: application/json``; ``GET /user`` carries the token in the ``Authorization``
  header only, and the token is dropped right after. Users are keyed by GitHub's numeric id.
- One-time links (local installs without a GitHub app): printed by ``inferclub serve``; each
  works once and expires.
- Sessions: a random token in a signed, HttpOnly, SameSite=Lax cookie (``Secure`` and
  ``__Host-`` over https); the store keeps its hash, so logging out ends it everywhere.

The rules (tokens, their lifetimes, who the local admin is) live in ``hub/accounts.py``; the
cookies in ``WebHandler`` (``handlers/base.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import urllib.parse
from typing import Any

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from inferclub.hub.accounts import LINK_PATH, STATE_TTL, AccountError
from inferclub.hub.config import Settings
from inferclub.hub.handlers.base import WebHandler

log = logging.getLogger("inferclub.auth")

STATE_COOKIE = "inferclub_oauth_state"
CALLBACK_PATH = "/auth/github/callback"
#: The longest ``next=`` path kept; a longer one is replaced by the dashboard.
MAX_NEXT = 1024


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _safe_next(value: str | None) -> str:
    """Only same-site paths. Browsers drop tabs and newlines from a URL and read ``\\`` as
    ``/``, so ``/\t/evil`` and ``/\\evil`` would leave the site like ``//evil``; anything but
    printable ASCII is refused (a CR/LF in a header was a 500). At most :data:`MAX_NEXT`
    characters: ``/auth/github`` stores it, and anyone may start a sign-in."""
    if (
        value
        and len(value) <= MAX_NEXT
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and all(0x21 <= ord(c) < 0x7F for c in value)
        and not urllib.parse.urlsplit(value).netloc
    ):
        return value
    return "/dashboard"


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
        state, verifier = await self.hub.accounts.create_oauth_state(
            _safe_next(self.get_query_argument("next", None))
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
        record = await self.hub.accounts.consume_oauth_state(state)
        if record is None:
            raise tornado.web.HTTPError(
                400, "This sign-in attempt expired or was already used. Start again."
            )
        if error := self.get_query_argument("error", ""):
            raise tornado.web.HTTPError(400, "GitHub sign-in did not complete (%s).", error)
        code = self.get_query_argument("code", "")
        if not code:
            raise tornado.web.HTTPError(400, "GitHub sent no authorization code.")
        github = GitHubClient(settings)
        try:
            access_token = await github.exchange_code(code, record.verifier, redirect_uri(self))
            gh_id, login = await github.get_user(access_token)
        except GitHubError as exc:
            log.warning("GitHub sign-in failed: %s", exc)
            raise tornado.web.HTTPError(exc.status, "%s", str(exc)) from None
        # The hub needs nothing else from GitHub: the access token is not kept anywhere.
        try:
            user = await self.hub.accounts.github_user(gh_id, login)
        except AccountError as exc:
            raise tornado.web.HTTPError(502, "%s", str(exc)) from None
        log.info("user %s (github id %d) signed in", user.login, gh_id)
        await self.start_session(user)
        self.redirect(_safe_next(record.next_path))


class LinkLoginHandler(WebHandler):
    """``/auth/link?token=...``: the one-time link ``inferclub serve`` prints."""

    async def get(self) -> None:
        user = await self.hub.accounts.consume_login_link(self.get_query_argument("token", ""))
        if user is None:
            raise tornado.web.HTTPError(
                400,
                "This sign-in link has expired or was already used. Get a new one with "
                "`inferclub users login-link LOGIN`.",
            )
        log.info("user %s signed in with a one-time link", user.login)
        await self.start_session(user)
        self.redirect("/dashboard")


class LogoutHandler(WebHandler):
    async def submit(self) -> None:
        await self.end_session()
        self.redirect("/login")


routes = [
    (r"/login", LoginHandler),
    (r"/auth/github", GitHubLoginHandler),
    (CALLBACK_PATH, GitHubCallbackHandler),
    (LINK_PATH, LinkLoginHandler),
    (r"/logout", LogoutHandler),
]
