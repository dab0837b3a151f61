"""How a `license-keeper` command ends: its exit code and, on failure, one line in kubectl's words.

Exit codes follow the monitoring plugins' convention: a script can tell "the license is bad" (2) from
"could not find out" (3, UNKNOWN), so an unreachable API server never pages as an expired license.
The table here is the one `--help` prints and docs/interfaces.md repeats (a test keeps them equal).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from ..kube import Forbidden, KubeError, NotFound, Unreachable

__all__ = [
    "EXIT_BAD",
    "EXIT_CODES",
    "EXIT_EXPIRING",
    "EXIT_UNKNOWN",
    "EXIT_VALID",
    "BadUsage",
    "KeeperCommand",
    "KeeperGroup",
    "api_error_line",
    "exit_codes_epilog",
    "fail",
]

EXIT_VALID, EXIT_EXPIRING, EXIT_BAD, EXIT_UNKNOWN = 0, 1, 2, 3

EXIT_CODES: dict[int, str] = {
    EXIT_VALID: "OK: the license is valid, or the command did what it was asked",
    EXIT_EXPIRING: "the license expires within --renew-before (status, validate)",
    EXIT_BAD: "the license is expired, missing, foreign or invalid, or the command was refused "
    "(a downgrade, a foreign Secret, Konnect failing)",
    EXIT_UNKNOWN: "could not check: a bad flag or setting, no kubeconfig, context or namespace, the API server "
    "unreachable or refusing (401, 403), a file that cannot be read or written, no answer in time",
}

# What each code means for one command, for its --help; every command can end with 3.
COMMAND_EXIT_CODES: dict[str, dict[int, str]] = {
    "run": {
        EXIT_VALID: "stopped by SIGTERM",
        1: "lost the leader Lease, or a background task ended (the pod restarts clean)",
        EXIT_UNKNOWN: "bad settings",
    },
    "status": {
        EXIT_VALID: "valid",
        EXIT_EXPIRING: "expiring within --renew-before",
        EXIT_BAD: "expired, missing, foreign or invalid",
        EXIT_UNKNOWN: "could not check (flags, kubeconfig, API server, RBAC)",
    },
    "validate": {
        EXIT_VALID: "valid",
        EXIT_EXPIRING: "expiring within --renew-before",
        EXIT_BAD: "expired or invalid",
        EXIT_UNKNOWN: "could not check (FILE unreadable, flags)",
    },
    "sync": {
        EXIT_VALID: "the leader polled Konnect (and wrote a newer license, or there was none)",
        EXIT_BAD: "the Secret is missing or foreign, or the leader answered that Konnect failed or the "
        "Secret refused the write",
        EXIT_UNKNOWN: "could not ask (flags, kubeconfig, API server, RBAC) or no keeper answered within --timeout",
    },
    "export": {
        EXIT_VALID: "written",
        EXIT_BAD: "the Secret holds no valid license",
        EXIT_UNKNOWN: "could not read the Secret or write FILE (flags, kubeconfig, API server, RBAC, "
        "FILE exists without --overwrite)",
    },
    "restore": {
        EXIT_VALID: "restored, or the Secret already holds this license",
        EXIT_BAD: "refused: not a valid backup, a better license in the Secret (without --force), a foreign or "
        "immutable Secret",
        EXIT_UNKNOWN: "could not check (flags, kubeconfig, API server, RBAC, FILE unreadable)",
    },
}


def exit_codes_epilog(command: str | None = None) -> str:
    """The "Exit codes" paragraph of a command's --help (the group's: the general table)."""
    codes = COMMAND_EXIT_CODES[command] if command else EXIT_CODES
    # \b keeps click from rewrapping the lines into one paragraph.
    return "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in codes.items())


def fail(message: str, code: int = EXIT_BAD) -> NoReturn:
    """One line on stderr, then exit: ``code`` 2 for a bad license or a refusal, 3 for could not check."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def api_error_line(error: KubeError, server: str, verb: str, what: str) -> str:
    """A failed API call in kubectl's form: the server and the object named once.

    A refusal (401/403) quotes the API server's own message, which names the user, the verb and the
    resource it refused, as ``Error from server (Forbidden): ...`` does in kubectl.
    """
    call = f"{verb} {what}"
    if isinstance(error, Forbidden):
        kind = "Unauthorized" if error.code == 401 else "Forbidden"
        return f"from server {server} ({kind}): {error.detail or 'cannot ' + call}"
    if isinstance(error, NotFound):
        return f"from server {server} (NotFound): {what} not found"
    if isinstance(error, Unreachable) and error.cause:
        return f"unable to connect to the server {server} ({error.cause}): {call}"
    if error.code is None:
        return f"from server {server}: {error.reason} ({call})"
    return f"from server {server} (HTTP {error.code}): {call} failed"


class BadUsage(click.UsageError):
    """A bad flag or argument: the command could not check anything, so exit 3, not click's 2 (our "bad")."""

    exit_code = EXIT_UNKNOWN


def _unknown(error: click.UsageError) -> BadUsage:
    return BadUsage(error.format_message(), error.ctx)


class KeeperCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _unknown(e) from None


class KeeperGroup(click.Group):
    command_class = KeeperCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _unknown(e) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:  # an unknown command
            raise _unknown(e) from None
