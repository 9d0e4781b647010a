"""Where prompts are looked for when a script loads: the data directory's ``voice/`` folder
first, then the English prompts shipped with the package."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sipswitch.media

SHIPPED_VOICE_DIR = Path(sipswitch.media.__file__).parent / "voice"


def voice_dirs(data_dir: Path) -> list[Path]:
    """The voice folders of a server, in the order a prompt name is looked up."""
    return [data_dir / "voice", SHIPPED_VOICE_DIR]


class PromptFolders:
    """A ``prompt_exists`` callback: is there a ``NAME.wav`` in one of these folders?"""

    def __init__(self, dirs: Iterable[Path]) -> None:
        self.dirs = list(dirs)

    def find(self, name: str) -> Path | None:
        for folder in self.dirs:
            candidate = folder / f"{name}.wav"
            if candidate.is_file():
                return candidate
        return None

    def __call__(self, name: str) -> bool:
        return self.find(name) is not None
