"""The README must stay true: every option it documents exists, and every option is documented."""

from __future__ import annotations

import re
from pathlib import Path

from modeldrop.server.settings import OPTIONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CI_RUN = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_readme_documents_every_option_with_its_environment_name() -> None:
    table = {row.split("|")[1].strip(): row for row in README.splitlines() if row.startswith("| `--")}
    for option in OPTIONS:
        row = next((row for flag, row in table.items() if f"`{option.flag}`" in flag), None)
        assert row is not None, f"{option.flag} is missing from the README's configuration table"
        assert f"`{option.env_name}`" in row, f"{option.flag}'s environment name is not {option.env_name} in README"


def test_readme_lists_no_option_that_does_not_exist() -> None:
    flags = {option.flag for option in OPTIONS}
    documented = set(re.findall(r"^\| `(--[a-z-]+)`", README, flags=re.MULTILINE))
    assert documented <= flags, f"README documents unknown options: {sorted(documented - flags)}"


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"^(bash scripts/setup\.sh test)\b", README, flags=re.MULTILINE)
    assert command is not None, "README lost its test command"
    assert command.group(1) in CI_RUN
