"""A fake GitHub for the dashboard's OAuth web flow, strict where the real one is (or should be).

- ``GET /login/oauth/authorize`` auto-approves: it checks the client id, the PKCE challenge
  (S256 only) and the state, then redirects to ``redirect_uri`` with ``code`` and ``state``.
- ``POST /login/oauth/access_token`` answers JSON only to ``Accept: application/json`` (the
  real one answers form-encoded otherwise); it checks the client secret, the code (single use,
  same ``redirect_uri``) and that ``code_verifier`` hashes to the challenge. Like GitHub, a
  refusal is a 200 with ``{"error": ...}``.
- ``GET /api/v3/user`` (the API base is ``root + "/api/v3"``, GitHub Enterprise style, so a
  test proves the web and API URLs are configured separately) wants the token in the
  ``Authorization`` header; a token in the query string gets a 401, as on GitHub.

Every request is recorded with its full query string, so a test can assert that the access
token never appears in one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tests.support.fakes.base import FakeHandler, FakeServer


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    user: dict[str, Any]
    used: bool = False


@dataclass
class TokenExchange:
    """What the token endpoint saw, for assertions."""

    accept: str
    verifier_ok: bool
    fields: dict[str, str] = field(default_factory=dict)


class FakeGitHub(FakeServer):
    def __init__(
        self, client_id: str = "Iv1.fakeclient", client_secret: str = "fake-secret"
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        #: The account that "signs in" at the next authorize.
        self.user: dict[str, Any] = {"id": 4242, "login": "octocat", "name": "The Octocat"}
        #: Answer the next authorize with ``error=access_denied`` (the user clicked Cancel).
        self.deny = False
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.exchanges: list[TokenExchange] = []
        #: The authorize URL query of each sign-in, parsed.
        self.authorizations: list[dict[str, str]] = []

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/login/oauth/authorize", AuthorizeHandler, args),
            (r"/login/oauth/access_token", TokenHandler, args),
            (r"/api/v3/user", UserHandler, args),
        ]

    @property
    def api_url(self) -> str:
        return self.root + "/api/v3"

    def hub_env(self) -> dict[str, str]:
        """Settings that point a hub at this fake."""
        return {
            "INFERCLUB_GITHUB_CLIENT_ID": self.client_id,
            "INFERCLUB_GITHUB_CLIENT_SECRET": self.client_secret,
            "INFERCLUB_GITHUB_URL": self.root,
            "INFERCLUB_GITHUB_API_URL": self.api_url,
        }

    def urls_seen(self) -> list[str]:
        """Path and query of every request this fake received."""
        return [r.path + ("?" + r.query if r.query else "") for r in self.requests]


class GitHubHandler(FakeHandler):
    fake: FakeGitHub

    def error(self, status: int, message: str) -> None:
        self.send_json({"message": message}, status)


class AuthorizeHandler(GitHubHandler):
    def get(self) -> None:
        q = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        self.fake.authorizations.append(q)
        if q.get("client_id") != self.fake.client_id:
            return self.error(404, "unknown client_id")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return self.error(400, "PKCE with S256 is required by this fake")
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        if not redirect_uri or not state:
            return self.error(400, "redirect_uri and state are required")
        sep = "&" if "?" in redirect_uri else "?"
        if self.fake.deny:
            self.fake.deny = False
            params = {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "state": state,
            }
            return self.redirect(redirect_uri + sep + urllib.parse.urlencode(params))
        code = secrets.token_hex(10)
        self.fake.grants[code] = Grant(
            q["client_id"], redirect_uri, q["code_challenge"], dict(self.fake.user)
        )
        self.redirect(redirect_uri + sep + urllib.parse.urlencode({"code": code, "state": state}))


class TokenHandler(GitHubHandler):
    def post(self) -> None:
        fields = {k: self.get_body_argument(k) for k in self.request.body_arguments}
        grant = self.fake.grants.get(fields.get("code", ""))
        verifier = fields.get("code_verifier", "")
        digest = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        ok = grant is not None and bool(verifier) and digest == grant.challenge
        accept = self.request.headers.get("Accept", "")
        self.fake.exchanges.append(TokenExchange(accept, ok, fields))
        if (
            fields.get("client_id") != self.fake.client_id
            or fields.get("client_secret") != self.fake.client_secret
        ):
            answer = {"error": "incorrect_client_credentials"}
        elif grant is None or grant.used:
            answer = {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            }
        elif fields.get("redirect_uri") != grant.redirect_uri:
            answer = {"error": "redirect_uri_mismatch"}
        elif not ok:
            answer = {"error": "invalid_grant", "error_description": "PKCE verification failed."}
        else:
            grant.used = True
            token = "gho_" + secrets.token_hex(18)
            self.fake.tokens[token] = grant.user
            answer = {"access_token": token, "token_type": "bearer", "scope": ""}
        if "application/json" in accept:
            self.send_json(answer)
        else:
            self.set_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            self.finish(urllib.parse.urlencode(answer))


class UserHandler(GitHubHandler):
    def get(self) -> None:
        if "access_token" in self.request.query_arguments:
            return self.error(401, "Must authenticate via the Authorization header.")
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        user = self.fake.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        if user is None:
            return self.error(401, "Requires authentication")
        self.send_json({**user, "type": "User", "avatar_url": ""})
