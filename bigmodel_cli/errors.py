"""Errors that are the user's to fix.

A `UserError` is printed as one line (no traceback) and exits with code 2. Everything
else is a bug in bigmodel and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input, options or workspace that the user can fix."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InputError(UserError):
    """A problem with one input file: names the file and, where known, line and field."""

    def __init__(
        self,
        path: object,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f" field '{field}'"
        if offset is not None:
            where += f" (byte {offset})"
        self.path, self.line, self.field, self.offset, self.problem = path, line, field, offset, problem
        super().__init__(f"{where}: {problem}", hint=hint)


class WorkspaceBusy(UserError):
    """Another bigmodel process holds the workspace lock."""
