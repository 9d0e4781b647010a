"""Maps TOML key paths to the line numbers where they are written, for error messages."""

from __future__ import annotations

import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _parse_key(text: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """Parse a (possibly dotted, possibly quoted) key starting at ``pos``."""
    parts: list[str] = []
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        ch = text[pos]
        if ch in "\"'":
            end = pos + 1
            while end < n and text[end] != ch:
                end += 2 if ch == '"' and text[end] == "\\" else 1
            if end >= n:
                return None
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE_KEY.match(text, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


def _scan_value(text: str, depth: int) -> tuple[int, str | None]:
    """Return the bracket depth after ``text`` and an unclosed multi-line string delimiter."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            delim = text[i : i + 3]
            end = text.find(delim, i + 3)
            if end < 0:
                return depth, delim
            i = end + 3
            continue
        if ch in "\"'":
            i += 1
            while i < n and text[i] != ch:
                i += 2 if ch == '"' and text[i] == "\\" else 1
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, None


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Return the first line (1-based) of every table header and key path in ``text``."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}
    depth = 0
    open_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if open_string is not None:
            end = raw.find(open_string)
            if end < 0:
                continue
            rest = raw[end + 3 :]
            open_string = None
            depth, open_string = _scan_value(rest, depth)
            continue
        if depth > 0:
            depth, open_string = _scan_value(raw, depth)
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            array = line.startswith("[[")
            parsed = _parse_key(line, 2 if array else 1)
            if parsed is not None:
                table = parsed[0]
                lines.setdefault(table, number)
                if array:  # [[name]]: the n-th table of the array is ("name", "n")
                    index = arrays.get(table, 0)
                    arrays[table] = index + 1
                    table = (*table, str(index))
                    lines.setdefault(table, number)
            continue
        parsed = _parse_key(line, 0)
        if parsed is None:
            continue
        key, pos = parsed
        lines.setdefault(table + key, number)
        if pos < len(line) and line[pos] == "=":
            depth, open_string = _scan_value(line[pos + 1 :], 0)
    return lines


def locate(lines: dict[tuple[str, ...], int], path: tuple[str | int, ...]) -> int:
    """Line of the longest written prefix of ``path``; 1 if none. List indexes match the
    tables of an array of tables (``[[name]]``) and otherwise fall back to the list's key."""
    keys = tuple(str(part) for part in path)
    for length in range(len(keys), 0, -1):
        found = lines.get(keys[:length])
        if found is not None:
            return found
    return 1
