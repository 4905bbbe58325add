"""Who is asking: HTTP Basic or a signed session cookie, roles, CSRF and failed-login limits.

* Bound to a loopback address with no users, the console is open: everyone is the operator
  ``anonymous`` (:func:`check_exposure` refuses any other address without users), and only
  requests addressed to a loopback host name (or ``web.public_url``'s) are answered.
* ``POST /api/v1/login`` sets ``dicomnode_session`` (HttpOnly, SameSite=Strict, HMAC-signed with
  the node's secret ``<storage.path>/web.secret``, bound to the user's password hash so a new
  password ends old sessions) and ``dicomnode_csrf``; every state-changing request made with
  the session cookie must repeat that token in ``X-CSRF-Token`` (double submit, and the token
  is the one signed into the session).
* A state-changing request whose ``Origin`` is another site is refused whatever its
  credentials (a browser may hold Basic credentials too).
* Failed logins (Basic or ``/login``) are counted per client address: ``FAILED_LOGINS`` within
  ``FAILED_WINDOW`` seconds and further attempts from it get 429 until the window has passed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from dicomnode.config import WebConfig
from dicomnode.web.users import ROLES, Role, User, UserDirectory

SESSION_COOKIE = "dicomnode_session"
CSRF_COOKIE = "dicomnode_csrf"
CSRF_HEADER = "X-CSRF-Token"
#: Seconds a session lasts.
SESSION_SECONDS = 8 * 3600
#: Failed logins per client address within the window before further attempts get 429.
FAILED_LOGINS = 5
FAILED_WINDOW = 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANONYMOUS = "anonymous"


class WebError(Exception):
    """The console cannot start as configured (the message says what to change)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(web: WebConfig, users: UserDirectory) -> bool:
    """True when the console runs open (loopback, no users); raise :class:`WebError` when it
    would be open on an address other machines reach."""
    if users.users():
        return False
    if not is_loopback(web.host):
        raise WebError(
            f"web.host is {web.host}, which is not a loopback address, and no users are "
            f"configured (web.users_file: {web.users_file or 'unset'}): the console and its "
            "API would be open to the network. Add a user with 'dicomnode users add NAME "
            "--role operator', bind web.host to 127.0.0.1, or set web.enabled: false")
    return True


def node_secret(path: Path) -> bytes:
    """The per-node signing key, made on first use (mode 0600)."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(handle, "w") as out:
        out.write(key.hex())
        out.flush()
        os.fsync(out.fileno())
    return key


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    via: Literal["open", "basic", "session"]


class FailedLogins:
    """Failed login times per client address, within a sliding window."""

    def __init__(self, limit: int = FAILED_LOGINS, window: float = FAILED_WINDOW):
        self.limit, self.window = limit, window
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(address, now)
            if len(times) < self.limit:
                return 0
            return max(1, int(self.window - (now - times[-self.limit])) + 1)

    def add(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(address, now).append(now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: Called for each refused login: (name tried, client address, detail).
Recorder = Callable[[str, str | None, str], None]


class Authenticator:
    def __init__(self, web: WebConfig, secret: bytes, record_failure: Recorder):
        self.directory = UserDirectory(web.users_file)
        self.secret = secret
        self.secure_cookies = web.tls.enabled
        self.public_origin = _origin(web.public_url) if web.public_url else None
        #: Host names an open console answers to: a page of another site that resolves its
        #: name to 127.0.0.1 (DNS rebinding) must not reach it.
        self.open_hosts = {"localhost", "127.0.0.1", "::1", web.host.lower(),
                           (urlsplit(web.public_url).hostname or "") if web.public_url else ""}
        self.failures = FailedLogins()
        self.record_failure = record_failure
        self._verified: dict[str, str] = {}  # HMAC of (name, password) → hash it matched

    @property
    def open(self) -> bool:
        return not self.directory.users()

    # --- credentials --------------------------------------------------------------------------

    def login(self, name: str, password: str, address: str | None) -> User:
        """The user whose name and password these are; 429 while ``address`` is blocked, 401
        (counted and recorded) when they are wrong."""
        client = address or "unknown"
        wait = self.failures.retry_after(client)
        if wait:
            raise HTTPException(429, f"too many failed logins from {client}; try again in "
                                     f"{wait} s", headers={"Retry-After": str(wait)})
        user = self.directory.users().get(name)
        if user is not None and self._password_ok(user, password):
            return user
        self.failures.add(client)
        self.record_failure(name[:64], address, "unknown user" if user is None
                            else "wrong password")
        raise HTTPException(401, "wrong user name or password",
                            headers={"WWW-Authenticate": 'Basic realm="dicomnode"'})

    def _password_ok(self, user: User, password: str) -> bool:
        key = hmac.new(self.secret, f"{user.name}\0{password}".encode(), hashlib.sha256).hexdigest()
        if self._verified.get(key) == user.password_hash:  # bcrypt once per password, not per call
            return True
        if not user.check(password):
            return False
        self._verified[key] = user.password_hash
        return True

    # --- sessions -----------------------------------------------------------------------------

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode("ascii"), hashlib.sha256).digest())

    def _fingerprint(self, user: User) -> str:
        return self._sign(user.password_hash)[:16]

    def issue(self, user: User) -> tuple[str, str]:
        """A session cookie value for ``user`` and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        payload = _b64(json.dumps({"u": user.name, "e": int(time.time()) + SESSION_SECONDS,
                                   "c": csrf, "h": self._fingerprint(user)}).encode())
        return f"{payload}.{self._sign(payload)}", csrf

    def session(self, value: str) -> tuple[User, str] | None:
        """The user and CSRF token of a session cookie, None when it is not a valid one."""
        payload, _, signature = value.partition(".")
        # Ours are ASCII; compare_digest would raise on a forged non-ASCII one (a 500).
        if not (signature and value.isascii()) or not hmac.compare_digest(
                signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        user = self.directory.users().get(str(data.get("u")))
        if user is None or int(data.get("e", 0)) < time.time() \
                or data.get("h") != self._fingerprint(user):
            return None
        return user, str(data.get("c"))

    # --- the request --------------------------------------------------------------------------

    def principal(self, request: Request) -> Principal:
        if request.method not in SAFE_METHODS:
            self._same_origin(request)
        if self.open:
            self._loopback_host(request)
            return Principal(ANONYMOUS, "operator", "open")
        address = request.client.host if request.client else None
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, binascii.Error):
                raise HTTPException(401, "malformed Basic credentials") from None
            user = self.login(name, password, address)
            return Principal(user.name, user.role, "basic")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            found = self.session(cookie)
            if found is None:
                raise HTTPException(401, "the session has expired or is not valid; log in again")
            user, csrf = found
            if request.method not in SAFE_METHODS and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, "").encode(), csrf.encode()):
                raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header (the value of "
                                         f"the {CSRF_COOKIE} cookie)")
            return Principal(user.name, user.role, "session")
        # No Basic challenge to a page's script (fetch sends Sec-Fetch-Mode cors/same-origin):
        # the browser would open its own password dialog instead of the page's login.
        scripted = request.headers.get("sec-fetch-mode", "navigate") != "navigate"
        raise HTTPException(401, "authentication required (HTTP Basic or POST /api/v1/login)",
                            headers=None if scripted else {
                                "WWW-Authenticate": 'Basic realm="dicomnode"'})

    def _loopback_host(self, request: Request) -> None:
        name = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if name not in self.open_hosts:
            raise HTTPException(403, f"an open console answers only to a loopback host name, "
                                     f"not {name!r}")

    def _same_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is None:
            return
        host = request.headers.get("host", "")
        if _origin(origin) not in {(request.url.scheme, host.lower()), self.public_origin}:
            raise HTTPException(403, f"cross-origin request from {origin} refused")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def require_role(principal: Principal, role: Role) -> None:
    if ROLES.index(principal.role) < ROLES.index(role):
        raise HTTPException(403, f"user {principal.name} is a {principal.role}; this needs the "
                                 f"{role} role")
