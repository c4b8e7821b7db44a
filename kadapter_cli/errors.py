"""Errors a user can act on.

`BadInput` (exit code 2) is for anything wrong with what the user gave us: an unreadable file, a
malformed record, an option that contradicts an artifact. Its message names the file and the record
or line. Anything else that escapes a command is an internal failure (exit code 1).

The library speaks in parameters, the CLI in flags. A message that names parameters is a
`ParamText`: `str()` gives the library's words (`lr must be positive, got -1`), `render(spell)` the
same message with each parameter spelled by `spell` — the command layer's flags
(`--lr must be positive, got -1`). `BadParameter` is the `BadInput` of one parameter's value.
"""

from __future__ import annotations

import contextlib
import contextvars
import string
from pathlib import Path
from typing import Any, Callable, Iterator

# (parameter name, setting or None) → how the parameter reads in a message
Speller = Callable[[str, "str | None"], str]

_FORMAT = string.Formatter()


def parameter_text(name: str, setting: str | None = None) -> str:
    """The library's spelling: `lr`, or with a setting `resume=True`, `device=cuda`."""
    return name if setting is None else f"{name}={setting}"


class ParamText:
    """A message that names parameters.

    `template` is a format string. A field that is not a value names a parameter: `{lr}` is the
    parameter `lr`, `{resume:True}` the setting `resume=True` (its text after `:` may hold value
    fields: `{device:{value}}`). Value fields (`value` and the keyword arguments) are formatted as
    in `str.format` (`{value!r}`, `{steps:,}`).
    """

    def __init__(self, template: str, **values: Any):
        self.template = template
        self.values = values
        self.parameters = [field for _, field, _, _ in _FORMAT.parse(template)
                           if field is not None and field not in values]

    def render(self, spell: Speller | None = None) -> str:
        """The message, each parameter spelled by `spell` (default: the library's `parameter_text`)."""
        spell = spell or parameter_text
        out = []
        for literal, field, spec, conversion in _FORMAT.parse(self.template):
            out.append(literal)
            if field is None:
                continue
            spec = _FORMAT.vformat(spec, (), self.values) if spec else spec
            if field in self.values:
                out.append(_FORMAT.format_field(_FORMAT.convert_field(self.values[field], conversion), spec or ""))
            else:
                out.append(spell(field, spec or None))
        return "".join(out)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"ParamText({self.render()!r})"


_SPELLER: contextvars.ContextVar[Speller | None] = contextvars.ContextVar("kadapter_speller", default=None)


@contextlib.contextmanager
def spelling(spell: Speller) -> Iterator[None]:
    """Within the block, messages shown while it runs (`progress.info`) spell parameters with `spell`:
    the command layer sets its flags here around a command."""
    token = _SPELLER.set(spell)
    try:
        yield
    finally:
        _SPELLER.reset(token)


def shown(message: str | ParamText) -> str:
    """A message as it is shown now: parameters spelled as the running command's flags, if one set them."""
    return message.render(_SPELLER.get()) if isinstance(message, ParamText) else message


class KadapterError(Exception):
    """Base class of errors with a message meant for the user. The message may be a `ParamText`."""

    exit_code = 1

    def render(self, spell: Speller | None = None) -> str:
        """The message with each parameter it names spelled by `spell` (the library's names by default)."""
        if len(self.args) == 1 and isinstance(self.args[0], ParamText):
            return self.args[0].render(spell)
        return str(self)


class BadInput(KadapterError):
    """Bad input: exit code 2, one clear line naming the file and the record or line."""

    exit_code = 2

    def __init__(self, message: str | ParamText, path: str | Path | None = None, record: str | int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.record = record
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return self.render()

    def render(self, spell: Speller | None = None) -> str:
        message = self.message.render(spell) if isinstance(self.message, ParamText) else self.message
        return self._where() + message

    def _where(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.record is not None:
                where += f", {self.record if isinstance(self.record, str) else f'record {self.record}'}"
            where += ": "
        elif self.record is not None:
            where = f"{self.record if isinstance(self.record, str) else f'record {self.record}'}: "
        return where


class BadParameter(BadInput):
    """A parameter's value is wrong, or parameters do not go together (exit code 2).

    `template` as `ParamText`'s, with `{value}` the value at fault:
    `BadParameter("{lr} must be positive, got {value}", value=-1)` reads `lr must be positive, got -1`
    from the library and `--lr must be positive, got -1` through the CLI. `parameter` is the first
    parameter the message names, `value` the value.
    """

    def __init__(self, template: str, value: Any = None, path: str | Path | None = None,
                 record: str | int | None = None, **values: Any):
        text = ParamText(template, value=value, **values)
        self.parameter = text.parameters[0] if text.parameters else None
        self.value = value
        super().__init__(text, path, record)


class OutputExists(BadInput):
    """The output folder exists and neither `overwrite` nor `resume` was given."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable stage; the message says what was kept and how to continue."""
