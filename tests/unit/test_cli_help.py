"""Every command's --help prints, as a person runs it (a subprocess with the rich help
formatter): a help text whose "[...]" rich takes for markup once made `corral agent --help`
fail with a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer._click import Command
from typer.core import TyperGroup

from corral.cli.lazy_group import COMMANDS, load


def command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]

    def walk(command: Command, path: list[str]) -> None:
        paths.append(path)
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    for name in COMMANDS:
        command = load(name)
        if isinstance(command, TyperGroup) and list(command.commands) == [name]:
            command = command.commands[name]  # a single command wrapped in an app
        walk(command, [name])
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "corral")
def test_help_prints_without_a_traceback(path: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral", *path, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "TERM": "xterm"},
    )
    assert out.returncode == 0, out.stderr[-800:]
    assert "Traceback" not in out.stderr
    assert "Usage" in out.stdout
