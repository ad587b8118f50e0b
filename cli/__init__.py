"""``pushq``: the command line, a package of click groups.

``pushq GROUP VERB`` (apps, credentials, users, tokens, clients, notifications,
data, webhooks), plus ``pushq run`` (the whole service on one host). The end-to-end demo is a development
tool beside the stand-ins: ``make demo`` (``python -m standins.demo``).
The one-word verbs of earlier versions (``pushq create-app``, ``pushq enroll``,
``pushq token``, ``pushq migrate`` …) are kept as shortcuts to the same
commands. Each module imports ``api``/``workers``/``standins`` only inside the
command that needs them.
"""

from __future__ import annotations

import click

from cli.apps import apps
from cli.clients import clients
from cli.common import CONTEXT_SETTINGS
from cli.credentials import credentials
from cli.data import data
from cli.notifications import notifications
from cli.run import run
from cli.tokens import tokens
from cli.users import users
from cli.webhooks import webhooks
from workers.health import worker_ping


class PushqGroup(click.Group):
    """A group whose help lists the groups first and the kept one-word shortcuts apart."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shortcuts: dict[str, str] = {}

    def add_shortcut(self, command: click.Command, name: str, target: str) -> None:
        """Register ``command`` under the old one-word ``name`` too; ``target`` is its new spelling."""
        self.add_command(command, name)
        self.shortcuts[name] = target

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        main_rows, shortcut_rows = [], []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            if name in self.shortcuts:
                shortcut_rows.append((name, f"= pushq {self.shortcuts[name]}"))
            else:
                main_rows.append((name, command.get_short_help_str(limit=90)))
        if main_rows:
            with formatter.section("Commands"):
                formatter.write_dl(main_rows)
        if shortcut_rows:
            with formatter.section("Shortcuts (the one-word verbs of earlier versions)"):
                formatter.write_dl(shortcut_rows)


@click.group(cls=PushqGroup, context_settings=CONTEXT_SETTINGS)
def main() -> None:
    """pushq: queue-backed push notifications (Web Push, APNs, FCM).

    Configuration comes from environment variables (DATABASE_URL, REDIS_URL,
    JWT_*, PUSHQ_*); see docs/configuration.md. Start everything with `pushq run`; every
    command and group has its own --help.
    """


for _command in (apps, credentials, users, tokens, clients, notifications, data, webhooks, run):
    main.add_command(_command)
main.add_command(worker_ping)  # workers/health.py: a worker's health check with an exit code

for _name, _group, _verb in (
    ("create-app", apps, "create"),
    ("set-apns", credentials, "set-apns"),
    ("set-fcm", credentials, "set-fcm"),
    ("rotate-keys", credentials, "rotate-keys"),
    ("enroll", users, "enroll"),
    ("unenroll", users, "unenroll"),
    ("import-patients", users, "import-patients"),
    ("create-client", clients, "create"),
    ("revoke-client", clients, "revoke"),
    ("migrate", data, "migrate"),
):
    main.add_shortcut(_group.commands[_verb], _name, f"{_group.name} {_verb}")
main.add_shortcut(tokens, "token", "tokens")

__all__ = ["main"]
