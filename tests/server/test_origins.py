"""server/origins.py: which host names and origins a browser request may come with, per setup (pure)."""

from __future__ import annotations

import pytest

from modeldrop.server.origins import BrowserPolicy, refusal, split_host
from modeldrop.server.settings import Settings, SettingsError, parse_hosts, parse_origins


def policy(**values: object) -> BrowserPolicy:
    return BrowserPolicy.from_settings(Settings.from_values(values))


def code(p: BrowserPolicy, headers: dict[str, str], method: str = "POST", path: str = "/files/",
         scheme: str = "http") -> str | None:
    error = refusal(p, method, path, scheme, headers)
    return None if error is None else error.code


@pytest.mark.parametrize(("value", "expected"), [
    ("Example.COM:8080", ("example.com", 8080)), ("[::1]:80", ("::1", 80)), ("[::1]", ("::1", None)),
    ("localhost.", ("localhost", None)), ("a b", None), ("x:y", None), ("[::1", None), ("h:123456", None), ("", None),
    ("é.example", None),
])
def test_split_host(value: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(value) == expected


def test_default_answers_loopback_and_addresses_only_from_its_own_pages() -> None:
    p = policy()
    for host in ("127.0.0.1:8080", "localhost:1", "[::1]:8080", "x.localhost", "192.168.1.5"):
        assert code(p, {"host": host}) is None
    for host in ("evil.example", "localhost.evil.example", "", "a b"):
        assert code(p, {"host": host}) == "unknown_host"
    assert code(p, {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"}) is None
    for origin in ("http://127.0.0.1:8081", "https://127.0.0.1:8080", "http://localhost:8080", "null", "garbage"):
        assert code(p, {"host": "127.0.0.1:8080", "origin": origin}) == "cross_origin"
    assert code(p, {"host": "127.0.0.1:8080", "sec-fetch-site": "cross-site"}) == "cross_origin"
    assert code(p, {"host": "127.0.0.1:8080", "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
                method="GET", path="/") is None
    assert code(p, {"host": "127.0.0.1:8080", "sec-fetch-site": "same-origin"}) is None
    assert code(p, {"host": "evil.example", "origin": "https://evil.example"}, path="/healthz") is None


def test_default_adds_the_bind_name() -> None:
    assert code(policy(host="models.lan", allow_anonymous=True), {"host": "models.lan:8080"}) is None
    assert code(policy(host="0.0.0.0", allow_anonymous=True), {"host": "models.lan:8080"}) == "unknown_host"


def test_a_token_allows_any_host_and_origin() -> None:
    p = policy(token=("t",))
    assert code(p, {"host": "evil.example", "origin": "https://evil.example"}) is None
    assert p.cors_origins == ["*"]


def test_listed_hosts_and_origins_come_on_top() -> None:
    p = policy(allowed_hosts=("models.example", "*.lan"), cors_origins=("https://ok.example",))
    for host in ("models.example", "a.b.lan", "127.0.0.1", "localhost"):
        assert code(p, {"host": host}) is None
    assert code(p, {"host": "lan"}) == "unknown_host"
    assert code(p, {"host": "models.example", "origin": "https://ok.example"}) is None
    assert code(p, {"host": "models.example", "origin": "https://evil.example"}) == "cross_origin"
    assert p.cors_origins == ["https://ok.example"]


def test_behind_a_trusted_proxy_the_forwarded_host_and_scheme_count() -> None:
    p = policy(trust_proxy=True, allowed_hosts=("models.example",))
    forwarded = {"host": "127.0.0.1:8080", "x-forwarded-host": "models.example", "x-forwarded-proto": "https"}
    assert code(p, {**forwarded, "origin": "https://models.example"}) is None
    assert code(p, {**forwarded, "x-forwarded-host": "evil.example"}) == "unknown_host"
    assert code(policy(), {**forwarded, "origin": "https://models.example"}) == "cross_origin"  # not trusted


def test_parse_origins_and_hosts() -> None:
    assert parse_origins("HTTPS://App.Example:443/, http://x:8080") == ("https://app.example", "http://x:8080")
    assert parse_origins("auto") == ("auto",) and parse_origins("*") == ("*",)
    assert parse_hosts("Models.Example, *.lan, [::1]") == ("models.example", "*.lan", "::1")
    for bad in ("ftp://x", "https://x/path", "auto,https://x", "x"):
        with pytest.raises(ValueError):
            parse_origins(bad)
    for bad in ("a/b", "x:80", "*x"):
        with pytest.raises(ValueError):
            parse_hosts(bad)
    with pytest.raises(SettingsError, match="--cors-origins"):
        Settings.from_values({"cors_origins": ("nope",)})
