"""server/settings.py: pure parsing from a dict environment and flags; exposure refusal."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from modeldrop.server.settings import (GIB, MIB, OPTIONS, Settings, SettingsError, add_arguments, format_default,
                                       parse_bool, parse_size)

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize(("text", "expected"), [("1048576", MIB), ("64MiB", 64 * MIB), ("2g", 2 * GIB),
                                                ("1.5 GiB", int(1.5 * GIB)), ("10b", 10)])
def test_settings_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "12XB", "-1G", "1..2G"])
def test_settings_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_settings_parse_bool_is_strict() -> None:
    assert parse_bool("TRUE") and not parse_bool("0")
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_settings_from_env_reads_prefixed_names_and_tokens() -> None:
    settings = Settings.from_env({"MODELDROP_MAX_SIZE": "10G", "MODELDROP_TOKENS": "a, b,", "REDIS_URL": "redis://x",
                                  "MODELDROP_DATA_DIR": "/srv/md", "MODELDROP_FSYNC": "false"})
    assert settings.max_size == 10 * GIB and settings.token == ("a", "b") and settings.redis_url == "redis://x"
    assert settings.models_dir == Path("/srv/md/models") and settings.staging_dir == Path("/srv/md/staging")
    assert settings.fsync is False and not settings.embedded


def test_settings_env_error_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="MODELDROP_MAX_UPLOADS"):
        Settings.from_env({"MODELDROP_MAX_UPLOADS": "many"})


def test_settings_flags_win_over_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, "serve")
    args = parser.parse_args(["--max-size", "1G", "--token", "x,y", "--token", "z", "--no-fsync"])
    settings = Settings.from_args(args, {"MODELDROP_MAX_SIZE": "5G", "MODELDROP_TOKENS": "env"})
    assert settings.max_size == GIB and settings.token == ("x", "y", "z") and settings.fsync is False


@pytest.mark.parametrize("values", [{"max_size": 0}, {"sync_interval": 1000}, {"workers": 0},
                                    {"idle_timeout": 0}, {"log_level": "loud"}])
def test_settings_invalid_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_values(values)


@pytest.mark.parametrize(("values", "refused"), [
    ({"host": "0.0.0.0"}, True), ({"host": "::"}, True), ({"host": "127.0.0.1"}, False), ({"host": "::1"}, False),
    ({"host": "localhost"}, False), ({"host": "0.0.0.0", "token": ("t",)}, False),
    ({"host": "0.0.0.0", "allow_anonymous": True}, False),
])
def test_settings_exposure_without_token(values: dict[str, object], refused: bool) -> None:
    assert (Settings.from_values(values).check_exposure() is not None) is refused


@pytest.mark.parametrize("values", [{"max_header_size": 8 * 1024},
                                    {"max_header_size": 64 * 1024, "max_metadata": 60 * 1024},
                                    {"header_timeout": 0}, {"max_header_lines": 5}])
def test_settings_request_head_bounds_are_checked(values: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_values(values)


def test_settings_request_head_bounds_default_to_32kib_100_lines_30_s() -> None:
    settings = Settings.from_env({})
    assert (settings.max_header_size, settings.max_header_lines, settings.header_timeout) == (32 * 1024, 100, 30.0)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@redis.example:6380/2", "redis://:***@redis.example:6380/2"),
    ("rediss://modeldrop:s3cret@10.0.0.5/0", "rediss://modeldrop:***@10.0.0.5/0"),
    ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    ("redis://redis.example:6379/0?password=s3cret&db=1", "redis://redis.example:6379/0?password=***&db=1"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_settings_describe_hides_the_redis_password(url: str, shown: str) -> None:
    described = Settings.from_env({"REDIS_URL": url}).describe()
    assert "s3cret" not in described
    assert f"mode=redis {shown} " in described


def test_settings_every_option_is_a_settings_field_and_every_field_an_option() -> None:
    fields = {field.name: field for field in dataclasses.fields(Settings)}
    assert [option.name for option in OPTIONS] == list(fields)
    for option in OPTIONS:
        assert option.default == fields[option.name].default, option.name


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_settings_option_parser_default_and_field_type_agree(option: typing.Any) -> None:
    hint = typing.get_type_hints(Settings)[option.name]
    parsed = option.parse if isinstance(option.parse, type) else typing.get_type_hints(option.parse)["return"]
    assert hint in (parsed, parsed | None), f"{option.name}: the field is {hint}, its parser gives {parsed}"
    if option.default is None:
        # unset is a value only for optional fields; models_dir and staging_dir say what fills them in
        assert hint == parsed | None or option.shown is not None, option.name
        assert getattr(Settings(), option.name) is not None or hint == parsed | None
    else:
        assert isinstance(option.default, typing.get_origin(parsed) or parsed), option.name
        if format_default(option) != "unset":  # an empty token list
            assert option.parse(format_default(option)) == option.default, f"--help misstates {option.flag}'s default"


def test_settings_readme_states_every_default() -> None:
    rows = dict(re.findall(r"^\| `(--[a-z-]+)`[^|]*\| `[A-Z_]+` \| ([^|]+) \|", README, flags=re.MULTILINE))
    for option in OPTIONS:
        assert rows[option.flag].strip().strip("`") == format_default(option), f"README: {option.flag}'s default"


def test_settings_folders_follow_the_data_dir_unless_given() -> None:
    settings = Settings(data_dir=Path("/srv/md"), staging_dir=Path("/fast/staging"))
    assert settings.models_dir == Path("/srv/md/models") and settings.staging_dir == Path("/fast/staging")
