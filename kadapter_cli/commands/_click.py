"""The click that typer runs on. Typer ≥ 0.2x vendors its own copy of click (`typer._click`), whose
classes differ from the `click` package's; everything in kadapter that needs click types takes
them from here so that `isinstance` checks and parameter sources match what typer produces."""

from __future__ import annotations

from typer._click.core import Context, ParameterSource
from typer._click.exceptions import BadParameter, ClickException
from typer._click.globals import get_current_context

__all__ = ["BadParameter", "ClickException", "Context", "ParameterSource", "get_current_context"]
