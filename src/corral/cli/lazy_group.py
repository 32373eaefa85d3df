"""The command tree, loaded lazily: `corral migrate` imports the migrate command's module
only, not every command's (each pulls in its own libraries: the lab's, tables, progress
bars). `corral --help` and an unknown command load them all, to list them and suggest."""

from __future__ import annotations

import importlib
from typing import Any

import typer
import typer.main
from typer._click import Command, Context
from typer.core import TyperGroup

# name -> (module, attribute): a Typer app (a group) or a command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("corral.cli.agent_command", "agent_command"),
    "migrate": ("corral.cli.migrate_command", "migrate_command"),
    "migrations": ("corral.cli.migration_history", "migrations_app"),
    "cluster": ("corral.cli.cluster_commands", "cluster_app"),
    "node": ("corral.cli.cluster_commands", "node_app"),
    "task": ("corral.cli.task_commands", "task_app"),
    "vm": ("corral.cli.vm_commands", "vm_app"),
    "checkpoint": ("corral.cli.vm_commands", "checkpoint_app"),
    "lab": ("corral.cli.lab_commands", "lab_app"),
    "dashboard": ("corral.cli.dashboard_command", "dashboard_command"),
}


def load(name: str) -> Command:
    """The click command of `name`, importing its module now."""
    module, attribute = COMMANDS[name]
    found: Any = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, typer.Typer):
        single = typer.Typer(add_completion=False)
        single.command(name)(found)
        found = single
    command = typer.main.get_command(found)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose commands of COMMANDS are imported when first asked for."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.commands[cmd_name] = load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        if args and args[0] not in COMMANDS and args[0] not in self.commands:
            for name in COMMANDS:  # an unknown command: suggest among all of them
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)
