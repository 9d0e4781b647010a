"""The composition root: the SIP server with its applications (IVR flows) and its external
lines and trunks (``trunk.manager.TrunkManager``) plugged in.

``serve`` is what ``sipswitch serve`` runs. ``SipCallControl`` implements the IVR engine's
``CallControl`` over a call the server answered itself (``pbx.application.ApplicationCall``):
prompts and digits through its media session, ``callto`` through the call model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from .config.settings import Settings
from .ivr.engine import FlowEngine
from .ivr.interface import CallControl, CallerHungUp, CallOutcome
from .ivr.prompts import PromptFolders, voice_dirs
from .ivr.registry import ScriptRegistry
from .media.ports import PortsExhausted
from .media.session import BEEP, MediaSession, PlayResult
from .pbx import server as pbx_server
from .pbx.application import Application, ApplicationCall, ApplicationError
from .pbx.b2bua import FEATURE_CONFIRM, forwarding_reason
from .pbx.workers import WorkerSpec
from .sip.clock import LoopClock
from .trunk.manager import TrunkManager

log = logging.getLogger("sipswitch.ivr")
_T = TypeVar("_T")
BUILTIN_SCRIPTS = Path(__file__).parent / "ivr" / "scripts"
VOICEMAIL_SECONDS = 120.0


class SipCallControl(CallControl):
    """One IVR call over SIP and RTP. Every method raises ``CallerHungUp`` once the caller
    has gone, so the flow stops at once."""

    def __init__(self, call: ApplicationCall, prompts: PromptFolders, data_dir: Path) -> None:
        self.call = call
        self.prompts = prompts
        self.data_dir = data_dir

    @property
    def caller(self) -> str:
        return self.call.caller

    @property
    def called(self) -> str:
        return self.call.called

    def _media(self) -> MediaSession:
        media = self.call.media
        if media is None or self.call.ended.is_set():
            raise CallerHungUp()
        return media

    async def _until_hangup(self, work: Awaitable[_T]) -> _T:
        """Await ``work`` unless the caller hangs up first."""
        task = asyncio.ensure_future(work)
        ended = asyncio.ensure_future(self.call.ended.wait())
        try:
            done, _ = await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise CallerHungUp()
        return task.result()

    async def answer(self) -> None:
        await self.call.answer()
        self._media()

    def _paths(self, prompts: list[str]) -> list[Path]:
        paths = []
        for name in prompts:
            path = self.prompts.find(name)
            if path is None:
                log.warning("call %s: prompt %r is missing", self.call.call.call_id, name)
                continue
            paths.append(path)
        return paths

    async def play(self, prompts: list[str], interruptible: bool) -> str | None:
        media = self._media()
        result = await self._until_hangup(media.play(self._paths(prompts), interruptible))
        if interruptible and result is PlayResult.INTERRUPTED:
            return await media.get_digit(0)
        if not interruptible:
            media.clear_digits()
        return None

    async def collect_digits(
        self,
        max_digits: int,
        first_timeout: float,
        inter_digit_timeout: float,
        terminator: str | None,
    ) -> str:
        media = self._media()
        digits = ""
        timeout = first_timeout
        while len(digits) < max_digits:
            digit = await self._until_hangup(media.get_digit(timeout))
            if digit is None:
                break
            if terminator and digit in terminator:
                break
            digits += digit
            timeout = inter_digit_timeout
        return digits

    async def callto(
        self, destination: str, ring_timeout: float, caller_id: str | None
    ) -> CallOutcome:
        if self.call.ended.is_set():  # no media needed: a callto may come before any answer
            raise CallerHungUp()
        outcome = await self.call.callto(destination, ring_timeout)
        return CallOutcome(outcome.value)

    async def record(
        self, path: str, max_seconds: float, terminator: str | None, beep: bool
    ) -> str:
        media = self._media()
        folder = self.data_dir / "recordings"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(path).name
        if beep:
            await self._until_hangup(media.play_tone(BEEP))
        result = await self._until_hangup(media.record(target, max_seconds, terminator or ""))
        return result.path.name

    async def voicemail(self, mailbox: str) -> None:
        """Leave a message in ``mailbox`` as the voicemail application does for a missed call."""
        box = VoicemailApplication(self.data_dir, self.prompts)
        try:
            await box.deposit(self, mailbox)
        finally:
            box.notify(self.call, mailbox)

    async def wait(self, seconds: float) -> None:
        self._media()
        await self._until_hangup(asyncio.sleep(seconds))

    async def hangup(self) -> None:
        await self.call.hangup()

    def now(self) -> datetime:
        return datetime.now()


class IvrApplication(Application):
    """Runs the IVR-XML script bound to the dialled number."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prompts = PromptFolders(voice_dirs(settings.data_dir))
        self.registry = ScriptRegistry(
            settings.ivr_xml_dir,
            settings.ivr.numbers,
            prompt_exists=self.prompts,
            clock=LoopClock(),
            builtin_dir=BUILTIN_SCRIPTS,
        )
        self.engine = FlowEngine(
            step_budget=settings.ivr.step_budget, ring_timeout=settings.calls.ring_timeout
        )

    def start(self) -> None:
        for problem in self.registry.load():
            log.error("%s", problem)
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()

    async def run(self, call: ApplicationCall, argument: str) -> None:
        flow = self.registry.flow(argument)
        if flow is None:
            log.error("call %s: IVR script %s is not loaded", call.call.call_id, argument)
            return
        control = SipCallControl(call, self.prompts, self.settings.data_dir)
        result = await self.engine.run(flow, control)
        log.info("call %s: IVR %s ended: %s", call.call.call_id, argument, result.reason)


class Mailboxes:
    """Voicemail messages kept as WAV files: ``voicemail/NUMBER/msg-*.wav`` in the data folder;
    a message listened to is renamed ``old-*.wav``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "voicemail"

    def folder(self, number: str) -> Path:
        path = self.root / Path(number).name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_messages(self, number: str) -> list[Path]:
        return sorted(self.folder(number).glob("msg-*.wav"))

    def old_messages(self, number: str) -> list[Path]:
        return sorted(self.folder(number).glob("old-*.wav"))

    def greeting(self, number: str) -> Path | None:
        path = self.folder(number) / "greeting.wav"
        return path if path.exists() else None


class VoicemailApplication(Application):
    """``voicemail``: a caller leaves a message for an extension that did not answer;
    ``voicemail-access`` (*97): the owner listens (1 replays, 7 deletes, 9 keeps and goes on;
    the PIN is asked first when one is set)."""

    def __init__(self, data_dir: Path, prompts: PromptFolders) -> None:
        self.data_dir = data_dir
        self.prompts = prompts
        self.boxes = Mailboxes(data_dir)

    def _control(self, call: ApplicationCall) -> SipCallControl:
        return SipCallControl(call, self.prompts, self.data_dir)

    async def run(self, call: ApplicationCall, argument: str) -> None:
        control = self._control(call)
        try:
            await control.answer()
            if call.call.manager.directory.lookup(argument) is None:
                return
            await self.deposit(control, argument)
        except CallerHungUp:
            pass
        finally:
            self.notify(call, argument)

    async def deposit(self, control: SipCallControl, number: str) -> None:
        media = control._media()
        greeting = self.boxes.greeting(number)
        paths = [greeting] if greeting else control._paths(["no-answer"])
        await control._until_hangup(media.play(paths, False))
        await control._until_hangup(media.play_tone(BEEP))
        name = time.strftime("msg-%Y%m%d-%H%M%S-") + f"{time.time_ns() % 1_000_000:06d}.wav"
        await control._until_hangup(
            media.record(self.boxes.folder(number) / name, VOICEMAIL_SECONDS, "#")
        )
        log.info("voicemail for %s from %s: %s", number, control.caller, name)
        await control.play(["goodbye"], False)

    def notify(self, call: ApplicationCall, number: str) -> None:
        new, old = len(self.boxes.new_messages(number)), len(self.boxes.old_messages(number))
        call.call.manager.notify_message_waiting(number, new, old)


class VoicemailAccess(VoicemailApplication):
    async def run(self, call: ApplicationCall, argument: str) -> None:
        control = self._control(call)
        extension = call.call.manager.directory.lookup(argument)
        try:
            await control.answer()
            if extension is None:
                return
            if extension.voicemail_pin:
                entered = ""
                for _ in range(3):
                    await control.play(["enter-extension"], True)
                    entered = await control.collect_digits(16, 8, 3, "#")
                    if entered == extension.voicemail_pin:
                        break
                    await control.play(["invalid"], False)
                if entered != extension.voicemail_pin:
                    return
            await self.listen(control, argument)
        except CallerHungUp:
            pass
        finally:
            self.notify(call, argument)

    async def listen(self, control: SipCallControl, number: str) -> None:
        media = control._media()
        messages = self.boxes.new_messages(number) + self.boxes.old_messages(number)
        count = min(len(messages), 9)
        await control.play([f"digit-{count}"], True)
        for message in messages:
            while True:
                media.clear_digits()
                await control._until_hangup(media.play([message], True))
                key = await control.collect_digits(1, 5, 1, None)
                if key != "1":
                    break
            if key == "7":
                message.unlink(missing_ok=True)
            elif message.name.startswith("msg-"):
                message.rename(message.with_name("old-" + message.name[4:]))
        await control.play(["goodbye"], False)


class FeatureConfirmation(Application):
    """``feature-confirm``: a star code changed the caller's forwarding (the argument is
    ``KIND:TARGET``, the target empty when cleared); the server answers, says so ("call
    forwarding is set to" and the target's digits, or "... is cleared") and hangs up. A call it
    cannot answer (no offer, no common codec) gets 480 with the same words as reason phrase."""

    def __init__(self, prompts: PromptFolders, data_dir: Path) -> None:
        self.prompts = prompts
        self.data_dir = data_dir

    async def run(self, call: ApplicationCall, argument: str) -> None:
        kind, _, target = argument.partition(":")
        control = SipCallControl(call, self.prompts, self.data_dir)
        try:
            await control.answer()
        except (ApplicationError, PortsExhausted, OSError) as exc:
            # No offer, no common codec, no media port: the words go in the reason phrase.
            log.info("call %s: star code not confirmed by voice: %s", call.call.call_id, exc)
            raise ApplicationError(480, forwarding_reason(kind, target or None)) from None
        if target:
            prompts = ["forwarding-set", *(f"digit-{d}" for d in target if d.isdigit())]
        else:
            prompts = ["forwarding-cleared"]
        with contextlib.suppress(CallerHungUp):
            await control.play(prompts, False)
        # The application's end hangs up: a BYE to the caller.


WORKER_COMMAND = [sys.executable, "-m", "sipswitch.worker"]


def _applications(settings: Settings, ivr: IvrApplication) -> dict[str, Application]:
    return {
        "ivr": ivr,
        "voicemail": VoicemailApplication(settings.data_dir, ivr.prompts),
        "voicemail-access": VoicemailAccess(settings.data_dir, ivr.prompts),
        FEATURE_CONFIRM: FeatureConfirmation(ivr.prompts, settings.data_dir),
    }


async def serve(settings: Settings, settings_source: Callable[[], Settings] | None = None) -> int:
    """Run the server with its applications until SIGTERM or SIGINT; SIGHUP reloads the
    settings with ``settings_source`` (reads the file again)."""
    ivr = IvrApplication(settings)
    ivr.start()
    try:
        return await pbx_server.serve(
            settings,
            applications=_applications(settings, ivr),
            trunks=TrunkManager(settings),
            settings_source=settings_source,
            trunks_factory=TrunkManager,
            worker_command=WORKER_COMMAND,
        )
    finally:
        ivr.stop()


async def serve_worker(spec: WorkerSpec) -> int:
    """Run one worker process of a server with ``[sip] workers`` > 1 (``sipswitch.worker``)."""
    settings = Settings.model_validate_json(spec.settings)
    ivr = IvrApplication(settings)
    ivr.start()
    try:
        return await pbx_server.serve_worker(
            spec,
            _applications(settings, ivr),
            trunks=TrunkManager(settings),
            trunks_factory=TrunkManager,
        )
    finally:
        ivr.stop()
