"""Prompt names and files: the user's voice folder before the shipped prompts, names that may
not leave the folder, the shipped files themselves, and the encoded-prompt cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipswitch.media.g711 import PCMA, PCMU
from sipswitch.media.prompts import (
    SHIPPED_PROMPTS,
    SHIPPED_VOICE_DIR,
    PromptCache,
    check_prompt,
    voice_path,
)
from sipswitch.media.wav import PromptError, probe_wav, read_wav, write_wav

from .support import rms, sine


def test_every_shipped_prompt_is_a_small_telephone_wav() -> None:
    total = 0
    for name in SHIPPED_PROMPTS:
        path = voice_path(name, None)
        assert path.parent == SHIPPED_VOICE_DIR
        info = probe_wav(path)
        assert (info.format_tag, info.sample_rate, info.channels, info.bits_per_sample) == (
            1, 8000, 1, 16
        )
        assert 0.3 < info.seconds < 5.0, name
        assert rms(read_wav(path)) > 500, name  # speech, not silence
        total += path.stat().st_size
    assert total < 500 * 1024
    assert sorted(p.stem for p in SHIPPED_VOICE_DIR.glob("*.wav")) == sorted(SHIPPED_PROMPTS)


def test_longer_sentences_take_longer() -> None:
    seconds = {n: probe_wav(voice_path(n, None)).seconds for n in SHIPPED_PROMPTS}
    assert seconds["welcome"] > seconds["enter-extension"] > seconds["goodbye"]
    assert seconds["no-answer"] > seconds["digit-1"]


def test_names_with_and_without_extension(tmp_path: Path) -> None:
    assert voice_path("welcome", tmp_path) == SHIPPED_VOICE_DIR / "welcome.wav"
    assert voice_path("welcome.wav", tmp_path) == SHIPPED_VOICE_DIR / "welcome.wav"
    assert voice_path(" digit-7 ", tmp_path).name == "digit-7.wav"


def test_user_folder_wins(tmp_path: Path) -> None:
    write_wav(tmp_path / "welcome.wav", sine(440, 100, 3000))
    (tmp_path / "sales").mkdir()
    write_wav(tmp_path / "sales" / "intro.wav", sine(440, 100, 3000))
    assert voice_path("welcome", tmp_path) == tmp_path / "welcome.wav"
    assert voice_path("sales/intro", tmp_path) == tmp_path / "sales" / "intro.wav"
    assert check_prompt("sales/intro.wav", tmp_path) == tmp_path / "sales" / "intro.wav"


def test_default_user_folder_is_data_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "voice").mkdir(parents=True)
    write_wav(tmp_path / "data" / "voice" / "busy.wav", sine(440, 100, 3000))
    assert voice_path("busy").resolve() == (tmp_path / "data" / "voice" / "busy.wav").resolve()


@pytest.mark.parametrize(
    "name", ["../welcome", "/etc/passwd", "", "  ", "a/../../b", "x\\..\\y", "a\x00b"]
)
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(PromptError):
        voice_path(name, tmp_path)


def test_unknown_prompt_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(PromptError) as caught:
        voice_path("nosuch", tmp_path)
    assert "nosuch.wav" in str(caught.value) and str(tmp_path) in str(caught.value)


def test_check_prompt_refuses_an_unplayable_file(tmp_path: Path) -> None:
    (tmp_path / "loud.wav").write_bytes(b"RIFF....WAVEnothing")
    with pytest.raises(PromptError, match="loud.wav"):
        check_prompt("loud", tmp_path)


def test_cache_encodes_once_and_notices_changes(tmp_path: Path) -> None:
    cache = PromptCache()
    path = tmp_path / "p.wav"
    write_wav(path, sine(440, 100, 3000))
    first = cache.encoded(path, PCMU)
    assert len(first) == 800
    assert cache.encoded(path, PCMU) is first
    assert cache.encoded(path, PCMA) != first
    assert len(cache) == 2
    write_wav(path, sine(440, 200, 3000))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert len(cache.encoded(path, PCMU)) == 1600
    with pytest.raises(PromptError):
        cache.encoded(tmp_path / "gone.wav", PCMU)


def test_cache_is_bounded(tmp_path: Path) -> None:
    cache = PromptCache(max_bytes=2000)
    for i in range(5):
        write_wav(tmp_path / f"{i}.wav", sine(440, 100, 3000))  # 800 bytes encoded
        cache.encoded(tmp_path / f"{i}.wav", PCMU)
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
