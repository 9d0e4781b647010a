"""The scripts a server runs: every ``*.xml`` of the xml folder plus the shipped defaults, the
numbers bound to them, and reloading a file when it changes (the last good version of a
script keeps serving while a broken edit is reported)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sipswitch.ivr.errors import ScriptError
from sipswitch.ivr.loader import PromptCheck, load_flow
from sipswitch.ivr.model import Flow
from sipswitch.sip.clock import Clock, LoopClock, TimerHandle

BUILTIN_SCRIPTS = Path(__file__).parent / "scripts"
POLL_INTERVAL = 2.0
MAX_SCRIPTS = 1000

log = logging.getLogger("sipswitch.ivr")

_Signature = tuple[int, int, int]


@dataclass
class _Script:
    path: Path
    signature: _Signature | None = None
    flow: Flow | None = None  # the last version that loaded
    error: ScriptError | None = None  # why the file as it is now does not load


class ScriptRegistry:
    """Loads and serves scripts by file name and by bound number.

    ``numbers`` maps a dialled number to a script file name (``{"800":
    "auto-attendant.xml"}``). A file in ``xml_dir`` wins over a shipped one of the same name.
    :meth:`start` polls the folder every ``poll_interval`` seconds on ``clock``."""

    def __init__(
        self,
        xml_dir: Path,
        numbers: Mapping[str, str],
        *,
        prompt_exists: PromptCheck | None = None,
        clock: Clock | None = None,
        builtin_dir: Path | None = BUILTIN_SCRIPTS,
        poll_interval: float = POLL_INTERVAL,
        logger: logging.Logger | None = None,
    ) -> None:
        self.xml_dir = xml_dir
        self.numbers = dict(numbers)
        self.prompt_exists = prompt_exists
        self.clock: Clock = clock or LoopClock()
        self.builtin_dir = builtin_dir
        self.poll_interval = poll_interval
        self.log = logger or log
        self._builtin: dict[str, _Script] = {}
        self._user: dict[str, _Script] = {}
        self._timer: TimerHandle | None = None

    # -- lookups

    def flow(self, name: str) -> Flow | None:
        """The script serving under this file name: the xml folder's (its last good
        version), else the shipped one."""
        for table in (self._user, self._builtin):
            script = table.get(name)
            if script is not None and script.flow is not None:
                return script.flow
        return None

    def flow_for_number(self, number: str) -> Flow | None:
        """The script bound to a dialled number, or None when the number is not an IVR."""
        name = self.numbers.get(number)
        return self.flow(name) if name is not None else None

    @property
    def names(self) -> list[str]:
        """Every script file name that serves a flow."""
        return sorted(n for n in {*self._user, *self._builtin} if self.flow(n) is not None)

    @property
    def errors(self) -> dict[str, ScriptError]:
        """The scripts whose current file does not load, by file name."""
        found = {n: s.error for n, s in self._builtin.items() if s.error is not None}
        found.update({n: s.error for n, s in self._user.items() if s.error is not None})
        return found

    def unbound_numbers(self) -> dict[str, str]:
        """Numbers bound to a script that does not exist (or never loaded)."""
        return {n: name for n, name in self.numbers.items() if self.flow(name) is None}

    # -- loading

    def load(self) -> list[ScriptError]:
        """Load the shipped scripts and the xml folder now; returns the errors found."""
        errors: list[ScriptError] = []
        if self.builtin_dir is not None:
            self._scan(self.builtin_dir, self._builtin, errors, shipped=True)
        errors.extend(self.poll())
        for number, name in sorted(self.unbound_numbers().items()):
            self.log.error(
                "ivr.numbers: %s is bound to %s, which is neither in %s nor shipped",
                number,
                name,
                self.xml_dir,
            )
        return errors

    def poll(self) -> list[ScriptError]:
        """Reload what changed in the xml folder; returns the new errors (also logged)."""
        errors: list[ScriptError] = []
        self._scan(self.xml_dir, self._user, errors, shipped=False)
        return errors

    def start(self) -> None:
        """Poll the xml folder every ``poll_interval`` seconds until :meth:`stop`."""
        if self._timer is None:
            self._timer = self.clock.call_later(self.poll_interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        try:
            self.poll()
        except Exception:  # a poll must never stop the polling
            self.log.exception("polling %s failed", self.xml_dir)
        if self._timer is not None:
            self._timer = self.clock.call_later(self.poll_interval, self._tick)

    def _scan(
        self, folder: Path, table: dict[str, _Script], errors: list[ScriptError], *, shipped: bool
    ) -> None:
        found = _xml_files(folder)
        for name in sorted(set(table) - set(found)):
            del table[name]
            self.log.info("ivr: %s was removed; it no longer serves", folder / name)
        for name, (path, signature) in sorted(found.items()):
            script = table.get(name)
            if script is None:
                script = table[name] = _Script(path)
            elif script.signature == signature and script.error is None:
                continue
            changed = script.signature != signature
            script.signature = signature
            try:
                flow = load_flow(path, self.prompt_exists)
            except ScriptError as exc:
                if not changed and script.error is not None and str(script.error) == str(exc):
                    continue  # the same broken file, already reported
                script.error = exc
                errors.append(exc)
                self._report(exc, script, shipped)
                continue
            reloaded = script.flow is not None
            script.flow, script.error = flow, None
            self.log.info(
                "ivr: %s %s (%d actions)",
                "reloaded" if reloaded else "loaded",
                path,
                len(flow.actions),
            )

    def _report(self, error: ScriptError, script: _Script, shipped: bool) -> None:
        for issue in error.issues:
            self.log.error("%s", issue)
        if script.flow is not None:
            self.log.error("%s: the previous version keeps serving", script.path)
        elif shipped:
            self.log.error("%s: the shipped script does not load", script.path)


def _xml_files(folder: Path) -> dict[str, tuple[Path, _Signature]]:
    found: dict[str, tuple[Path, _Signature]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return found
    except OSError as exc:
        log.error("%s: cannot read the folder: %s", folder, exc.strerror)
        return found
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.name.endswith(".xml") or entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:
            continue
        if len(found) >= MAX_SCRIPTS:
            log.error("%s: more than %d scripts; the rest are ignored", folder, MAX_SCRIPTS)
            break
        found[entry.name] = (Path(entry.path), (st.st_mtime_ns, st.st_size, st.st_ino))
    return found
