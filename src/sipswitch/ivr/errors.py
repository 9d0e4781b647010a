"""Errors of IVR-XML scripts: every problem carries the file, line and column it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Position:
    """A place in a script file; line and column count from 1 (columns in characters)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class ScriptIssue:
    """One problem in a script: where it is and a plain reason."""

    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


class ScriptError(Exception):
    """A script cannot be used; ``str()`` gives one ``file:line:col: message`` line per issue."""

    def __init__(self, issues: Iterable[ScriptIssue]) -> None:
        self.issues = sorted(issues, key=lambda issue: issue.position)
        if not self.issues:
            raise ValueError("ScriptError needs at least one issue")
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @classmethod
    def at(cls, position: Position, message: str) -> ScriptError:
        return cls([ScriptIssue(position, message)])

    @property
    def first(self) -> ScriptIssue:
        return self.issues[0]
