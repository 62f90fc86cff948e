"""Who may reach the server through a browser: the host names it answers to and the origins it serves.

CORS headers only decide what a page may *read*; a "simple" cross-origin request (a form POST, a no-cors
fetch, an <img>) is still sent and acted upon. So requests from a foreign origin are refused here, before
anything else runs, and requests for a foreign host name too: that is what a DNS-rebinding page sends, with
no Origin header to give it away. With a token neither matters (a page cannot know the token, and it travels
in a header, never in a cookie), which is why `auto` then allows any origin and any host.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from modeldrop.server import errors
from modeldrop.server.settings import Settings, normalize_origin
from modeldrop.server.tus import headers as tus

# always answered: container and load-balancer health checks use whatever host name they like
OPEN_PATHS = frozenset({"/healthz"})
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclasses.dataclass(frozen=True)
class BrowserPolicy:
    any_host: bool = False
    hosts: frozenset[str] = LOOPBACK_NAMES      # exact names, lower case, without port
    host_suffixes: tuple[str, ...] = (".localhost",)
    ip_addresses: bool = True                   # a page cannot rebind an address, only a name
    any_origin: bool = False
    origins: frozenset[str] = frozenset()       # normalized, besides the request's own origin
    trust_proxy: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserPolicy:
        tokened = bool(settings.token)
        any_origin = settings.cors_origins == ("*",) or (settings.cors_origins == ("auto",) and tokened)
        origins = frozenset() if settings.cors_origins in (("auto",), ("*",)) else frozenset(settings.cors_origins)
        if settings.allowed_hosts == ("auto",):
            if tokened:
                return cls(any_host=True, any_origin=any_origin, origins=origins, trust_proxy=settings.trust_proxy)
            bound = settings.host.lower()
            hosts = LOOPBACK_NAMES | ({bound} if not _is_address(bound) else frozenset())
            return cls(hosts=hosts, any_origin=any_origin, origins=origins, trust_proxy=settings.trust_proxy)
        if settings.allowed_hosts == ("*",):
            return cls(any_host=True, any_origin=any_origin, origins=origins, trust_proxy=settings.trust_proxy)
        # listed names come on top of loopback names and addresses, which no page can rebind
        names = [name for name in settings.allowed_hosts if not name.startswith("*.")]
        suffixes = tuple(name[1:] for name in settings.allowed_hosts if name.startswith("*."))
        return cls(hosts=LOOPBACK_NAMES | frozenset(names), host_suffixes=(".localhost", *suffixes),
                   any_origin=any_origin, origins=origins, trust_proxy=settings.trust_proxy)

    @property
    def cors_origins(self) -> list[str]:
        """What CORSMiddleware may grant: same-origin requests need no CORS headers."""
        return ["*"] if self.any_origin else sorted(self.origins)


def split_host(value: str) -> tuple[str, int | None] | None:
    """'Example.COM:8080' -> ('example.com', 8080), '[::1]' -> ('::1', None); None if malformed."""
    value = value.strip().lower()
    port: int | None = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            return None
        port = int(port_text)
    if not name or not all(c.isalnum() or c in ".-_:" for c in name) or not name.isascii():
        return None
    return name.rstrip("."), port


def host_allowed(policy: BrowserPolicy, name: str) -> bool:
    if policy.any_host:
        return True
    if name in policy.hosts or any(name.endswith(suffix) for suffix in policy.host_suffixes):
        return True
    return policy.ip_addresses and _is_address(name)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def request_origin(policy: BrowserPolicy, scheme: str, headers: Mapping[str, str]) -> tuple[str, str | None]:
    """(scheme, Host as the client sent it) of this request, from the proxy's headers when it is trusted."""
    host = headers.get("host")
    if policy.trust_proxy:
        forwarded_scheme, forwarded_host = tus.parse_forwarded(headers)
        scheme = forwarded_scheme or scheme
        host = forwarded_host or host
    return scheme, host


def refusal(policy: BrowserPolicy, method: str, path: str, scheme: str,
            headers: Mapping[str, str]) -> errors.HTTPError | None:
    """Why this request must not reach the app, or None. `headers` keys are lower case."""
    if path in OPEN_PATHS:
        return None
    scheme, host = request_origin(policy, scheme, headers)
    parsed = split_host(host) if host else None
    if not policy.any_host and (parsed is None or not host_allowed(policy, parsed[0])):
        shown = (host or "")[:100]
        return errors.MisdirectedHost(
            f"this server does not answer to the host name {shown!r}; if that is its name, add it to "
            "--allowed-hosts (MODELDROP_ALLOWED_HOSTS), or set a token")
    if policy.any_origin:
        return None
    origin = headers.get("origin")
    if origin is not None:
        own = normalize_origin(f"{scheme}://{host}") if parsed is not None else None
        given = normalize_origin(origin)
        if given is not None and (given == own or given in policy.origins):
            return None
        return errors.CrossOrigin(
            f"requests from pages of {origin[:100]!r} are not accepted: to let that site use this server, add it "
            "to --cors-origins (MODELDROP_CORS_ORIGINS) or set a token; behind a reverse proxy, pass --trust-proxy")
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        # following a link to the page is fine: the other site cannot see what it opens
        if headers.get("sec-fetch-mode") == "navigate" and method in ("GET", "HEAD"):
            return None
        return errors.CrossOrigin("requests from another web site are not accepted by this server")
    return None


class BrowserGuard:
    """ASGI middleware: answers refused requests itself, before CORS, routing or anything stored."""

    def __init__(self, app: ASGIApp, policy: BrowserPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = refusal(self.policy, scope["method"], scope["path"], scope.get("scheme", "http"),
                            Headers(scope=scope))
            if error is not None:
                await answer_error(scope, send, error)
                return
        await self.app(scope, receive, send)


async def answer_error(scope: Scope, send: Send, error: errors.HTTPError) -> None:
    """The JSON error answer, for middleware that runs outside the app's exception handlers."""
    body = b"" if scope["method"] == "HEAD" else json.dumps({"error": error.code, "message": error.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["path"].startswith("/files"):
        headers.append((b"tus-resumable", tus.TUS_VERSION.encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
