"""Voice prompts: finding a prompt by name (the user's voice folder first, then the prompts
shipped in this package) and a bounded cache of prompts already encoded for a codec.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from .g711 import Codec
from .wav import PromptError, probe_wav, read_wav

SHIPPED_VOICE_DIR = Path(__file__).parent / "voice"
DEFAULT_USER_VOICE_DIR = Path("data") / "voice"

# The prompts shipped with the package (scripts/make-prompts.sh made them).
SHIPPED_PROMPTS = (
    "welcome",
    "enter-extension",
    "invalid",
    "please-hold",
    "busy",
    "no-answer",
    "goodbye",
    "forwarding-set",
    "forwarding-cleared",
    *(f"digit-{d}" for d in range(10)),
)


def voice_path(
    name: str, user_dir: str | os.PathLike[str] | None = DEFAULT_USER_VOICE_DIR
) -> Path:
    """The file of a prompt name (``welcome`` or ``welcome.wav``; a sub-folder such as
    ``sales/intro`` is allowed): the user's voice folder wins over the shipped prompts.
    Raises ``PromptError`` for an unknown name or one that leaves the folder."""
    cleaned = name.strip()
    if not cleaned:
        raise PromptError("empty prompt name")
    relative = Path(cleaned if cleaned.lower().endswith(".wav") else cleaned + ".wav")
    if relative.is_absolute() or ".." in relative.parts or "\\" in cleaned or "\x00" in cleaned:
        raise PromptError(f"prompt name {name!r} must be a name inside the voice folder")
    folders = [Path(user_dir)] if user_dir is not None else []
    folders.append(SHIPPED_VOICE_DIR)
    for folder in folders:
        candidate = folder / relative
        if candidate.is_file():
            return candidate
    where = " or ".join(str(f) for f in folders)
    raise PromptError(f"no prompt {name!r} (looked for {relative} in {where})")


def check_prompt(
    name: str, user_dir: str | os.PathLike[str] | None = DEFAULT_USER_VOICE_DIR
) -> Path:
    """Resolve a prompt name and check that its file can be played (for load-time checks of
    scripts). Raises ``PromptError`` saying what is wrong."""
    path = voice_path(name, user_dir)
    probe_wav(path)
    return path


class PromptCache:
    """Prompt files encoded for a codec, kept while they are unchanged on disk. Bounded by
    total size; the least recently used are dropped first."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[tuple[int, int], bytes]] = (
            OrderedDict()
        )
        self._size = 0

    def encoded(self, path: str | os.PathLike[str], codec: Codec) -> bytes:
        """The file's audio encoded with ``codec``. Raises ``PromptError``."""
        resolved = Path(path)
        try:
            st = resolved.stat()
        except OSError:
            raise PromptError(f"{resolved}: no such sound file") from None
        key = (str(resolved.resolve()), codec.name)
        stamp = (st.st_mtime_ns, st.st_size)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == stamp:
            self._entries.move_to_end(key)
            return entry[1]
        payload = codec.encode(read_wav(resolved))
        if entry is not None:
            self._size -= len(entry[1])
            del self._entries[key]
        if len(payload) <= self.max_bytes:
            self._entries[key] = (stamp, payload)
            self._size += len(payload)
            while self._size > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return payload

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)


PROMPTS = PromptCache()
