"""The CLI's help: no ``<bool>`` labels beside flags, which take no value."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import cli

COMMANDS = [[], ["inspect"], ["plan"], ["convert"], ["skeleton"], ["serve"], ["worker"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "graft")
def test_help_shows_no_bool_labels(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def test_serve_port_defaults_to_graft_port() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "120"})
    assert "GRAFT_PORT" in result.output
