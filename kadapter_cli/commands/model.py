"""Commands (being written)."""

from kadapter_cli.commands import app  # noqa: F401
