"""The ``sipswitch`` command: serve, reload, check-config, extension management and IVR
scripts."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sqlalchemy.exc import SQLAlchemyError

import sipswitch
from sipswitch.config import ConfigError, Settings, load_settings
from sipswitch.store import (
    Database,
    Extension,
    ExtensionNotFound,
    StoreError,
    generate_password,
    validate_number,
)
from sipswitch.store.extensions import FORWARD_KINDS

DEFAULT_CONFIG = Path("sipswitch.toml")
PROG = "sipswitch"
_T = TypeVar("_T")


class CommandError(Exception):
    """A command failed in a way the user can fix; printed without a traceback."""



def _switch(parser: argparse.ArgumentParser, name: str, on: str, off: str | None = None) -> None:
    """``--NAME`` / ``--no-NAME``, storing True / False in NAME (dashes as underscores) and
    nothing when neither is given."""
    group = parser.add_mutually_exclusive_group()
    dest = name.replace("-", "_")
    for flag, value, text in ((f"--{name}", True, on), (f"--no-{name}", False, off)):
        group.add_argument(
            flag, dest=dest, action="store_const", const=value, default=argparse.SUPPRESS,
            help=text,
        )  # fmt: skip

def _optional_text(text: str) -> str | None:
    return None if text.lower() in ("none", "off", "-") else text


def _limit(text: str) -> int | None:
    if text.lower() in ("unlimited", "none", "-"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'unlimited', got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS keeps a sub-command's parser from overwriting options given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"settings file (default: ./{DEFAULT_CONFIG} if it exists)",
    )
    common.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (default: data_dir of the settings, else ./data)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], description="sipswitch IP-PBX and SIP server"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {sipswitch.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the server")
    serve.set_defaults(handler=_serve)
    reload = commands.add_parser(
        "reload",
        parents=[common],
        help="make the running server read its settings file and TLS certificates again",
    )
    reload.set_defaults(handler=_reload)

    check = commands.add_parser(
        "check-config", parents=[common], help="validate the settings file and exit"
    )
    check.set_defaults(handler=_check_config)

    ext = commands.add_parser("ext", parents=[common], help="manage extensions")
    ext_commands = ext.add_subparsers(dest="ext_command", required=True, metavar="ACTION")

    add = ext_commands.add_parser("add", parents=[common], help="create an extension")
    add.add_argument("number")
    add.add_argument(
        "--password", help="password ('-' reads it from stdin; omitted: one is generated)"
    )
    add.add_argument("--name", default="", help="display name")
    add.add_argument("--max-calls", type=_limit, default=None, metavar="N|unlimited")
    add.add_argument("--max-outgoing", type=_limit, default=None, metavar="N|unlimited")
    add.set_defaults(handler=_ext_add)

    listing = ext_commands.add_parser("list", parents=[common], help="show all extensions")
    listing.set_defaults(handler=_ext_list)

    change = ext_commands.add_parser("set", parents=[common], help="change an extension")
    change.add_argument("number")
    change.add_argument("--password", help="new password ('-' reads it from stdin)")
    change.add_argument("--name", help="display name")
    change.add_argument(
        "--max-calls", type=_limit, default=argparse.SUPPRESS, metavar="N|unlimited"
    )
    change.add_argument(
        "--max-outgoing", type=_limit, default=argparse.SUPPRESS, metavar="N|unlimited"
    )
    switch = change.add_mutually_exclusive_group()
    switch.add_argument("--enable", dest="enabled", action="store_const", const=True)
    switch.add_argument("--disable", dest="enabled", action="store_const", const=False)
    for kind in FORWARD_KINDS:
        change.add_argument(
            f"--forward-{kind.replace('_', '-')}",
            dest=f"forward_{kind}",
            type=_optional_text,
            default=argparse.SUPPRESS,
            metavar="NUMBER|none",
            help="forward calls " + ("always" if kind == "always" else kind.replace("_", " ")),
        )
    change.add_argument(
        "--no-answer-timeout",
        dest="no_answer_timeout",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="SECONDS|none",
        help="ring this long before forwarding on no answer",
    )
    _switch(change, "voicemail", "send unanswered calls to the mailbox")
    _switch(
        change,
        "forward-media",
        "relay this extension's calls' RTP through the server",
        "let media flow directly unless NAT or address realms need the relay",
    )
    change.add_argument(
        "--voicemail-pin",
        dest="voicemail_pin",
        type=_optional_text,
        default=argparse.SUPPRESS,
        metavar="DIGITS|none",
        help="PIN asked before listening",
    )
    change.add_argument(
        "--max-duration",
        dest="max_call_duration",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="SECONDS|none",
        help="end calls of this extension after this long",
    )
    change.set_defaults(handler=_ext_set, enabled=None)

    remove = ext_commands.add_parser("remove", parents=[common], help="delete an extension")
    remove.add_argument("number")
    remove.set_defaults(handler=_ext_remove)

    route = commands.add_parser("route", parents=[common], help="inspect call routing")
    route_commands = route.add_subparsers(dest="route_command", required=True, metavar="ACTION")
    route_test = route_commands.add_parser(
        "test", parents=[common], help="show where a dialled number goes"
    )
    route_test.add_argument("number")
    route_test.add_argument("--from", dest="caller", default=None, help="calling extension")
    route_test.set_defaults(handler=_route_test)

    _add_ivr_commands(commands, common)
    _add_tls_commands(commands, common)
    _add_trunk_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (CommandError, StoreError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"{PROG}: database error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _config_path(args: argparse.Namespace) -> Path | None:
    path: Path | None = getattr(args, "config", None)
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return path


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args), getattr(args, "data", None))


def _check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    load_settings(path, getattr(args, "data", None))
    print(f"OK: {path}" if path is not None else "OK: no settings file, all defaults")
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported here: the other commands need none of the server's modules.
    app: Any = importlib.import_module("sipswitch.app")
    # SIGHUP reads the same file again, with the same --data.
    source = functools.partial(load_settings, _config_path(args), getattr(args, "data", None))
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code = runner.run(app.serve(settings, source))
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


def _reload(args: argparse.Namespace) -> int:
    """SIGHUP to the server running on the data directory (found by its pid file), once the
    settings file is known to be valid."""
    from sipswitch.pbx.server import PID_FILE

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"{PROG}: the server was not signalled; it keeps its settings", file=sys.stderr)
        return 1
    pid_file = settings.data_dir / PID_FILE
    pid = _server_pid(pid_file)
    os.kill(pid, signal.SIGHUP)
    print(
        f"sent SIGHUP to sipswitch (pid {pid} in {pid_file}): it reads its settings file again "
        "(groups, dial plan and lists apply to new calls; other changes need a restart) and its "
        "TLS certificates; its log tells the outcome"
    )
    return 0


def _server_pid(pid_file: Path) -> int:
    """The pid of the server that wrote ``pid_file``, checked to be a running sipswitch (a
    stale file's number may belong to another process by now)."""
    try:
        text = pid_file.read_text()
    except FileNotFoundError:
        raise CommandError(
            f"no server is running on this data directory ({pid_file} does not exist)"
        ) from None
    try:
        pid = int(text.strip())
    except ValueError:
        pid = 0
    if pid <= 0:
        raise CommandError(f"{pid_file} does not hold a process id")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CommandError(f"no server is running: process {pid} ({pid_file}) is gone") from None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc to check against: the file is trusted
    if b"sipswitch" not in command:
        raise CommandError(f"process {pid} ({pid_file}) is not sipswitch: not signalled")
    return pid


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        db = Database.from_settings(settings)
        try:
            await db.open()
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def _read_password(value: str, stdin: TextIO) -> str:
    if value != "-":
        return value
    line = stdin.readline().rstrip("\r\n")
    if not line:
        raise CommandError("no password on standard input")
    return line


def _number(args: argparse.Namespace) -> str:
    return validate_number(args.number)


def _ext_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    number = _number(args)
    generated = args.password is None
    password = generate_password() if generated else _read_password(args.password, sys.stdin)
    realm = settings.sip.realm

    async def work(db: Database) -> Extension:
        return await db.extensions.add(
            number,
            password,
            realm,
            display_name=args.name,
            max_calls=args.max_calls,
            max_outgoing_calls=args.max_outgoing,
        )

    _with_database(settings, work)
    print(f"Added extension {number}.")
    if generated:
        print(f"Password: {password}")
        print("It is shown only this once.")
    return 0


def _show_limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _ext_list(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(db: Database) -> list[Extension]:
        return await db.extensions.list()

    extensions = _with_database(settings, work)
    if not extensions:
        print("No extensions.")
        return 0
    realm = settings.sip.realm
    header = ("NUMBER", "NAME", "MAX CALLS", "MAX OUTGOING", "ENABLED", "MEDIA")
    rows = [
        (
            ext.number + ("*" if ext.realm != realm else ""),
            ext.display_name,
            _show_limit(ext.max_calls),
            _show_limit(ext.max_outgoing_calls),
            "yes" if ext.enabled else "no",
            "relayed" if ext.forward_media else "auto",
        )
        for ext in extensions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    if any(ext.realm != realm for ext in extensions):
        print(
            f"* stored for another realm than sip.realm ({realm!r}): "
            "set a new password so these can register"
        )
    return 0


def _ext_set(args: argparse.Namespace) -> int:
    settings = _settings(args)
    number = _number(args)
    changes: dict[str, Any] = {}
    if args.password is not None:
        changes["password"] = _read_password(args.password, sys.stdin)
        changes["realm"] = settings.sip.realm
    if args.name is not None:
        changes["display_name"] = args.name
    if hasattr(args, "max_calls"):
        changes["max_calls"] = args.max_calls
    if hasattr(args, "max_outgoing"):
        changes["max_outgoing_calls"] = args.max_outgoing
    if args.enabled is not None:
        changes["enabled"] = args.enabled
    features = (
        *(f"forward_{k}" for k in FORWARD_KINDS),
        "no_answer_timeout",
        "max_call_duration",
        "voicemail",
        "voicemail_pin",
        "forward_media",
    )
    for feature in features:
        if hasattr(args, feature):
            changes[feature] = getattr(args, feature)
    if not changes:
        raise CommandError(
            "nothing to change: give --password, --name, --max-calls, --max-outgoing, "
            "--forward-..., --no-answer-timeout, --max-duration, --[no-]forward-media, --enable "
            "or --disable"
        )

    async def work(db: Database) -> Extension:
        return await db.extensions.set(number, **changes)

    _with_database(settings, work)
    print(f"Updated extension {number}.")
    return 0


def _route_test(args: argparse.Namespace) -> int:
    from sipswitch.pbx.directory import ExtensionDirectory
    from sipswitch.pbx.routing import Reject, Router

    settings = _settings(args)

    async def work(db: Database) -> tuple[str, bool]:
        directory = ExtensionDirectory(db.extensions)
        await directory.load()
        router = Router(directory, settings.groups, settings.dialplan, settings.lists)
        route = router.resolve(args.number, args.caller)
        return router.describe(route), not isinstance(route.destination, Reject)

    line, routable = _with_database(settings, work)
    print(line)
    return 0 if routable else 1


def _ext_remove(args: argparse.Namespace) -> int:
    settings = _settings(args)
    number = _number(args)

    async def work(db: Database) -> bool:
        return await db.extensions.remove(number)

    if not _with_database(settings, work):
        raise ExtensionNotFound(number)
    print(f"Removed extension {number}.")
    return 0


def _add_ivr_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    ivr = commands.add_parser("ivr", parents=[common], help="check and simulate IVR-XML scripts")
    ivr_commands = ivr.add_subparsers(dest="ivr_command", required=True, metavar="ACTION")
    voice = argparse.ArgumentParser(add_help=False)
    voice.add_argument(
        "--voice",
        type=Path,
        action="append",
        metavar="DIR",
        help="look for prompts here (repeatable; default: DATA/voice, then the shipped ones)",
    )

    check = ivr_commands.add_parser(
        "check", parents=[common, voice], help="load scripts and report every error"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(handler=_ivr_check)

    simulate = ivr_commands.add_parser(
        "simulate",
        parents=[common, voice],
        help="run a script without phones and print each step",
        description="Runs the flow with a scripted caller: each getdtmf attempt takes the next "
        "--digits entry ('' or '-': the caller presses nothing), each callto ends with the "
        "next --outcome (answered when none is left).",
    )
    simulate.add_argument("file", type=Path, metavar="FILE")
    simulate.add_argument(
        "--digits",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys the caller presses at the next getdtmf attempt (repeatable)",
    )
    simulate.add_argument(
        "--outcome",
        action="append",
        default=[],
        choices=["answered", "busy", "no-answer", "unreachable", "reject", "failure"],
        help="how the next callto ends (repeatable)",
    )
    simulate.add_argument("--caller", default="100", help="the caller's number (default 100)")
    simulate.add_argument("--called", default="800", help="the number dialled (default 800)")
    simulate.add_argument(
        "--time", type=_local_time, default=None, help="local time of the call: 'YYYY-MM-DD HH:MM'"
    )
    simulate.add_argument(
        "--barge-in", action="store_true", help="the caller types during the prompts"
    )
    simulate.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="step budget (default: ivr.step_budget)",
    )
    simulate.set_defaults(handler=_ivr_simulate)


def _local_time(text: str) -> Any:
    from sipswitch.ivr.commands import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prompt_check(args: argparse.Namespace, settings: Settings) -> Any:
    from sipswitch.ivr.prompts import PromptFolders, voice_dirs

    return PromptFolders(args.voice or voice_dirs(settings.data_dir))


def _ivr_check(args: argparse.Namespace) -> int:
    from sipswitch.ivr.commands import check_scripts

    settings = _settings(args)
    return check_scripts(args.files, _prompt_check(args, settings), sys.stdout, sys.stderr)


def _ivr_simulate(args: argparse.Namespace) -> int:
    from datetime import datetime

    from sipswitch.ivr.commands import simulate_script

    settings = _settings(args)
    if args.steps is not None and args.steps < 1:
        raise CommandError("--steps must be at least 1")
    return simulate_script(
        args.file,
        digits=args.digits,
        outcomes=args.outcome,
        caller=args.caller,
        called=args.called,
        start=args.time or datetime.now().replace(microsecond=0),
        barge_in=args.barge_in,
        step_budget=args.steps or settings.ivr.step_budget,
        ring_timeout=settings.calls.ring_timeout,
        prompt_exists=_prompt_check(args, settings),
        out=sys.stdout,
        err=sys.stderr,
    )


def _add_tls_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    tls = commands.add_parser("tls", parents=[common], help="TLS certificates for SIP over TLS")
    tls_commands = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    selfsigned = tls_commands.add_parser(
        "selfsigned",
        parents=[common],
        help="write a self-signed certificate and key (the [tls] cert and key paths)",
    )
    selfsigned.add_argument(
        "--host", required=True, metavar="NAME", help="the name or address phones connect to"
    )
    selfsigned.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    selfsigned.add_argument("--force", action="store_true", help="replace existing files")
    selfsigned.set_defaults(handler=_tls_selfsigned)


def _tls_selfsigned(args: argparse.Namespace) -> int:
    from sipswitch.config.settings import TlsSettings
    from sipswitch.sip.transport.certs import write_self_signed

    settings = _settings(args)
    tls = settings.tls or TlsSettings()
    cert = tls.path(tls.cert, settings.data_dir)
    key = tls.path(tls.key, settings.data_dir)
    assert cert is not None and key is not None
    if not 1 <= args.days <= 36500:
        raise CommandError("--days must be between 1 and 36500")
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not args.force:
        raise CommandError(f"already there: {', '.join(existing)} (--force replaces)")
    try:
        info = write_self_signed(args.host, cert, key, days=args.days)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"Wrote {cert} and {key}.")
    print(f"  subject      {info.subject}")
    print(f"  names        {', '.join(info.names)}")
    print(f"  valid until  {info.not_after:%Y-%m-%d}")
    print(f"  SHA-256      {info.fingerprint_sha256}")
    if settings.tls is None:
        print("Add a [tls] section to the settings to serve SIP over TLS with it.")
    return 0


def _add_trunk_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    trunk = commands.add_parser("trunk", parents=[common], help="external lines and SIP trunks")
    trunk_commands = trunk.add_subparsers(dest="trunk_command", required=True, metavar="ACTION")
    listing = trunk_commands.add_parser(
        "list", parents=[common], help="show each trunk's state as the running server reports it"
    )
    listing.set_defaults(handler=_trunk_list)


def _trunk_list(args: argparse.Namespace) -> int:
    import time

    from sipswitch.trunk.status import table

    for line in table(_settings(args), time.time()):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
