"""The one settings object, shared by `modeldrop serve` and `modeldrop worker`.

Every option is declared once, as a Settings field: its type, parser, default and help. OPTIONS, read
back from those fields, builds the command-line flags and the environment names (`MODELDROP_<NAME>`,
plus `REDIS_URL`); the README's configuration table copies it, and a test keeps the two equal. Parsing is pure:
`Settings.from_env(environ)` and `Settings.from_args(namespace, environ)` never touch `os.environ`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "MODELDROP_"

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_SIZE_SUFFIXES = {"": 1, "b": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB,
                  "g": GIB, "gb": GIB, "gib": GIB, "t": 1024 * GIB, "tb": 1024 * GIB, "tib": 1024 * GIB}


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the option."""


def parse_size(text: str) -> int:
    """'64MiB', '100M', '4g', '1048576' -> bytes (binary units; a plain number is bytes)."""
    cleaned = text.strip().lower().replace(" ", "")
    digits = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = cleaned[len(digits):]
    if not digits or suffix not in _SIZE_SUFFIXES:
        raise ValueError(f"not a size: {text!r} (use bytes or a unit like 64MiB, 2G)")
    try:
        value = float(digits)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return int(value * _SIZE_SUFFIXES[suffix])


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def normalize_origin(text: str) -> str | None:
    """'HTTPS://App.Example:443/' -> 'https://app.example'; None if it is not scheme://host[:port]."""
    match = re.fullmatch(r"(https?)://([a-z0-9.\-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?/?", text.strip().lower())
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port is None or (scheme, port) in (("http", "80"), ("https", "443")):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def parse_origins(text: str) -> tuple[str, ...]:
    """--cors-origins: `auto`, `*`, or origins like https://app.example (normalized)."""
    items = parse_list(text)
    if items in (("auto",), ("*",)):
        return items
    origins = []
    for item in items:
        origin = normalize_origin(item)
        if origin is None:
            raise ValueError(f"{item!r} is not an origin like https://app.example (or use auto or *)")
        origins.append(origin)
    return tuple(origins)


def parse_hosts(text: str) -> tuple[str, ...]:
    """--allowed-hosts: `auto`, `*`, or host names (`*.example.com` for subdomains), lower case, no port."""
    items = tuple(item.lower() for item in parse_list(text))
    if items in (("auto",), ("*",)):
        return items
    for item in items:
        if not re.fullmatch(r"(\*\.)?[a-z0-9.\-]+|\[?[0-9a-f:.]+\]?", item):
            raise ValueError(f"{item!r} is not a host name like models.example or *.example.com (no port)")
    return tuple(item.strip("[]") for item in items)


def parse_mode(text: str) -> int:
    return int(text, 8)


def redact_url(url: str) -> str:
    """url with its password replaced by ***, in the user info or a `password=` query (both reach Redis)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(an unparseable URL, not shown)"
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join("password=***" if item.split("=", 1)[0].lower() == "password" else item
                     for item in parts.query.split("&")) if parts.query else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag, environment name, parser, default and help text."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    flag_kind: str = "value"  # value | switch | repeat
    env: str | None = None
    commands: tuple[str, ...] = ("serve", "worker")
    shown: str | None = None  # the default as --help and the README say it, when the value alone would mislead

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.name.upper()


SERVE = ("serve",)


def setting(parse: Callable[[str], Any], default: Any, help: str, *, flag_kind: str = "value",
            env: str | None = None, commands: tuple[str, ...] = ("serve", "worker"), shown: str | None = None) -> Any:
    """A Settings field that is also a flag and an environment variable; OPTIONS reads it back as an Option.

    Typed Any so a field whose default is filled in later (models_dir) keeps its plain type.
    """
    return dataclasses.field(default=default, metadata={"option": {
        "parse": parse, "help": help, "flag_kind": flag_kind, "env": env, "commands": commands, "shown": shown}})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option, declared once: the field's name and type, then its parser, default and help.

    models_dir and staging_dir default to None, meaning folders in data_dir: __post_init__ fills them in,
    so a Settings always holds Paths there.
    """

    host: str = setting(str, "127.0.0.1", "address to listen on", commands=SERVE)
    port: int = setting(int, 8080, "port to listen on", commands=SERVE)
    data_dir: Path = setting(Path, Path("./data"), "base directory; models and staging default to folders in it",
                            shown="./data")
    models_dir: Path = setting(Path, None, "directory llama-server reads", shown="<data-dir>/models")
    staging_dir: Path = setting(Path, None, "where uploads are received; must be on the models filesystem",
                               shown="<data-dir>/staging")
    redis_url: str | None = setting(str, None, "Redis for the RQ finalize queue and cross-host locks; "
                                   "unset = embedded mode", env="REDIS_URL")
    token: tuple[str, ...] = setting(parse_list, (), "bearer token clients must send (repeat, or comma-separated in "
                                    "the env)", flag_kind="repeat", env="MODELDROP_TOKENS", commands=SERVE)
    allow_anonymous: bool = setting(parse_bool, False, "accept uploads without a token on a non-loopback address",
                                   flag_kind="switch", commands=SERVE)
    max_size: int = setting(parse_size, 256 * GIB, "largest upload accepted (Tus-Max-Size)", commands=SERVE)
    max_append_size: int | None = setting(
        parse_size, None,
        "largest request body accepted (e.g. 95MiB behind Cloudflare's 100 MB limit), announced as Upload-Limit's "
        "max-append-size and in /api/config, which the web UI and modeldrop upload follow; larger tus PATCHes get 413",
        commands=SERVE)
    fsync: bool = setting(
        parse_bool, True,
        "sync data before reporting an offset (--no-fsync only to compare with servers that never sync)",
        flag_kind="switch")
    trust_proxy: bool = setting(parse_bool, False, "honour X-Forwarded-Host/-Proto and Forwarded", flag_kind="switch",
                               commands=SERVE)
    cors_origins: tuple[str, ...] = setting(
        parse_origins, ("auto",),
        "other web sites (origins, e.g. https://app.example) whose pages may use this server, comma-separated; "
        "* for any; auto = any when a token is set, else none (only the server's own web UI)",
        commands=SERVE)
    allowed_hosts: tuple[str, ...] = setting(
        parse_hosts, ("auto",),
        "host names this server answers to besides localhost and IP addresses (the Host header, or the "
        "forwarded host with --trust-proxy), comma-separated, *.example.com for subdomains, * for any; "
        "auto = any when a token is set, else --host",
        commands=SERVE)
    max_header_size: int = setting(parse_size, 32 * KIB, "largest request line plus headers accepted (431 above)",
                                  commands=SERVE)
    max_header_lines: int = setting(int, 100, "most header lines in one request (431 above)", commands=SERVE)
    header_timeout: float = setting(
        float, 30.0, "seconds a client gets to send a request's headers, from its first byte or its connection",
        commands=SERVE)
    idle_timeout: float = setting(float, 60.0, "seconds a PATCH may send nothing before it is cut", commands=SERVE)
    lock_timeout: float = setting(float, 10.0, "seconds a request waits for an upload's lock before 423",
                                 commands=SERVE)
    sync_interval: int = setting(parse_size, 256 * MIB, "bytes between syncs inside one long PATCH", commands=SERVE)
    direct_io: bool = setting(
        parse_bool, True,
        "write large bodies with O_DIRECT, hashed from memory, instead of through the page cache (where the "
        "file system allows it)", flag_kind="switch", commands=SERVE)
    expire_after: float = setting(
        float, 7 * 24 * 3600.0,
        "seconds an idle unfinished upload (also a partial no final used, or a split set no shard joined), "
        "or the record of a finished one, is kept")
    max_metadata: int = setting(parse_size, 4 * KIB, "largest Upload-Metadata header accepted", commands=SERVE)
    max_uploads: int = setting(int, 64, "unfinished uploads accepted at once", commands=SERVE)
    disk_headroom: int = setting(parse_size, 1 * GIB, "free space always left on the staging filesystem",
                                commands=SERVE)
    allow_overwrite: bool = setting(parse_bool, False, "let a new upload replace an installed model of the same name",
                                   flag_kind="switch")
    file_mode: int = setting(parse_mode, 0o644, "permissions of installed models (octal)")
    file_uid: int | None = setting(int, None, "owner uid for installed models (for the llama-server container)")
    file_gid: int | None = setting(int, None, "owner gid for installed models")
    llama_server_url: str | None = setting(str, None, "llama-server in router mode (e.g. http://llama-server:8080): "
                                           "told to rescan after each install; its state of each model is shown, "
                                           "and models can be loaded and unloaded through modeldrop")
    llama_api_key: str | None = setting(str, None, "API key for llama-server (its --api-key)")
    workers: int = setting(int, 1, "server processes (serve) or RQ worker processes (worker)")
    shutdown_timeout: float = setting(float, 10.0, "seconds running requests get to save their bytes on SIGTERM",
                                     commands=SERVE)
    log_level: str = setting(str, "info", "debug, info, warning or error")
    maintenance_interval: float = setting(
        float, 30.0, "seconds between sweeps of expired uploads and requeue checks", commands=SERVE)
    stale_after: float = setting(
        float, 60.0,
        "seconds a finished upload's status may stay unchanged, with nobody finalizing it, before it is requeued",
        commands=SERVE)
    web_dir: Path | None = setting(
        Path, None, "built web UI served at / (unset: the one installed with the package, or web/dist in a checkout)",
        shown="built-in", commands=SERVE)
    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name, folder in (("models_dir", "models"), ("staging_dir", "staging")):
            value = getattr(self, name)
            object.__setattr__(self, name, self.data_dir / folder if value is None else Path(value))
        if self.max_size <= 0:
            raise SettingsError("--max-size must be positive")
        if self.max_append_size is not None and self.max_append_size <= 0:
            raise SettingsError("--max-append-size must be positive")
        if self.sync_interval < MIB:
            raise SettingsError("--sync-interval must be at least 1MiB")
        if self.workers < 1:
            raise SettingsError("--workers must be at least 1")
        if self.idle_timeout <= 0 or self.lock_timeout <= 0:
            raise SettingsError("--idle-timeout and --lock-timeout must be positive")
        for name, parse, values in (("--cors-origins", parse_origins, self.cors_origins),
                                    ("--allowed-hosts", parse_hosts, self.allowed_hosts)):
            try:
                parse(",".join(values))
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
        if self.header_timeout <= 0:
            raise SettingsError("--header-timeout must be positive")
        if self.max_header_lines < 16:
            raise SettingsError("--max-header-lines must be at least 16: browsers send a dozen or more")
        if self.max_header_size < self.max_metadata + 8 * KIB:
            raise SettingsError(f"--max-header-size ({self.max_header_size} bytes) must leave room for "
                                f"--max-metadata ({self.max_metadata} bytes) and the other headers: at least "
                                f"{self.max_metadata + 8 * KIB}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"--log-level must be debug, info, warning or error, not {self.log_level!r}")

    @property
    def embedded(self) -> bool:
        """No Redis: finalize runs in-process and locks are local files."""
        return not self.redis_url

    @property
    def binds_loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_exposure(self) -> str | None:
        """The reason this configuration must not start, or None.

        Without tokens anyone who reaches the port can write into the models directory, so that is only
        allowed on loopback unless the operator says so explicitly.
        """
        if not self.token and not self.binds_loopback_only and not self.allow_anonymous:
            return (f"refusing to listen on {self.host} without a token: set --token (MODELDROP_TOKENS), "
                    "bind to 127.0.0.1, or pass --allow-anonymous")
        return None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        return cls(**{key: value for key, value in values.items() if value is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = environ.get(option.env_name)
            if raw is None and option.name == "token":
                raw = environ.get("MODELDROP_TOKEN")
            if raw is None or raw == "":
                continue
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{option.env_name}: {exc}") from None
        values.update({key: value for key, value in (overrides or {}).items() if value is not None})
        return cls.from_values(values)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        """Flags win over the environment, the environment over defaults."""
        given = {name: value for name, value in vars(namespace).items()
                 if name in _BY_NAME and value is not None and value != []}
        if "token" in given:
            given["token"] = tuple(t for item in given["token"] for t in parse_list(item))
        return cls.from_env(environ, given)

    def describe(self) -> str:
        """One line for the startup log: it must not carry secrets, so the Redis URL loses its password."""
        mode = f"redis {redact_url(self.redis_url)}" if self.redis_url else "embedded (no Redis)"
        return (f"models={self.models_dir} staging={self.staging_dir} mode={mode} "
                f"fsync={'on' if self.fsync else 'off'} auth={'token' if self.token else 'none'}")


OPTIONS: tuple[Option, ...] = tuple(Option(field.name, default=field.default, **field.metadata["option"])
                                    for field in dataclasses.fields(Settings) if "option" in field.metadata)
_BY_NAME = {option.name: option for option in OPTIONS}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Adds every option of `command` to parser; unset flags stay None so the environment can fill them."""
    for option in OPTIONS:
        if command not in option.commands:
            continue
        help_text = f"{option.help} [env {option.env_name}; default {format_default(option)}]"
        if option.flag_kind == "switch":
            parser.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif option.flag_kind == "repeat":
            parser.add_argument(option.flag, dest=option.name, action="append", default=None,
                                metavar=option.name.upper(), help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.name, type=_argparse_type(option), default=None,
                                metavar=option.name.upper(), help=help_text)


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = option.name
    return convert


def format_default(option: Option) -> str:
    """The default as --help and the README's table say it; unless `shown`, parsing it gives the default back."""
    value = option.default
    if option.shown is not None:
        return option.shown
    if value is None or value == ():
        return "unset"
    if option.parse is parse_size:
        for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if option.parse is parse_mode:
        return oct(value)[2:].rjust(4, "0")
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
