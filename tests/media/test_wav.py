"""WAV prompts: the accepted layouts (16-bit PCM, µ-law, A-law, extensible), a clear error for
every other one, truncation, and writing recordings."""

from __future__ import annotations

import shutil
import struct
import subprocess
import wave
from pathlib import Path

import pytest

from sipswitch.media.g711 import alaw_encode, ulaw_decode, ulaw_encode
from sipswitch.media.wav import (
    FORMAT_ALAW,
    FORMAT_PCM,
    FORMAT_ULAW,
    PromptError,
    WavWriter,
    probe_wav,
    read_wav,
    write_wav,
)

from .support import sine

TONE = sine(440, 100, 8000)


def wav_bytes(
    data: bytes, tag: int = FORMAT_PCM, channels: int = 1, rate: int = 8000, bits: int = 16,
    extra_chunks: bytes = b"", data_size: int | None = None, fmt_extra: bytes = b"",
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + fmt_extra
    size = len(data) if data_size is None else data_size
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
        + b"data" + struct.pack("<I", size) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_pcm_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.wav", wav_bytes(TONE))
    info = probe_wav(path)
    assert (info.format_tag, info.channels, info.sample_rate, info.bits_per_sample) == (
        FORMAT_PCM, 1, 8000, 16
    )
    assert info.samples == 800 and info.seconds == pytest.approx(0.1)
    assert read_wav(path) == TONE


def test_g711_files_are_decoded(tmp_path: Path) -> None:
    ulaw = write(tmp_path, "u.wav", wav_bytes(ulaw_encode(TONE), FORMAT_ULAW, bits=8,
                                              fmt_extra=b"\x00\x00"))
    alaw = write(tmp_path, "a.wav", wav_bytes(alaw_encode(TONE), FORMAT_ALAW, bits=8))
    assert read_wav(ulaw) == ulaw_decode(ulaw_encode(TONE))
    assert len(read_wav(alaw)) == len(TONE)
    assert probe_wav(ulaw).format_name == "µ-law"


def test_other_chunks_and_odd_padding_are_skipped(tmp_path: Path) -> None:
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00" + b"fact" + struct.pack(
        "<I", 4
    ) + b"\x20\x03\x00\x00"
    path = write(tmp_path, "x.wav", wav_bytes(TONE, extra_chunks=extra))
    assert read_wav(path) == TONE


def test_extensible_pcm(tmp_path: Path) -> None:
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extension = struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", FORMAT_PCM) + guid_tail
    path = write(tmp_path, "e.wav", wav_bytes(TONE, 0xFFFE, fmt_extra=extension))
    assert read_wav(path) == TONE
    bad = struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", FORMAT_PCM) + bytes(14)
    path = write(tmp_path, "f.wav", wav_bytes(TONE, 0xFFFE, fmt_extra=bad))
    with pytest.raises(PromptError, match="EXTENSIBLE"):
        probe_wav(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (wav_bytes(TONE, rate=16000), "sample rate is 16000 Hz, prompts must be 8000 Hz"),
        (wav_bytes(TONE + TONE, channels=2), "2 channels, prompts must be mono"),
        (wav_bytes(TONE[:800], bits=8), "8-bit PCM, expected 16-bit"),
        (wav_bytes(TONE, tag=3, bits=32), "32-bit float audio is not supported"),
        (wav_bytes(TONE, tag=0x11, bits=4), "IMA ADPCM audio is not supported"),
        (wav_bytes(TONE, tag=0x1234), "format 0x1234 audio is not supported"),
        (wav_bytes(TONE, data_size=len(TONE) + 100), "truncated: the data chunk announces"),
        (wav_bytes(TONE)[:30], "truncated"),
        (wav_bytes(TONE)[:12], "without a format chunk"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt \x08\x00\x00\x00" + bytes(8), "truncated WAV format"),
        (b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00", "data chunk before the format"),
        (wav_bytes(TONE).replace(b"data", b"junk"), "without a data chunk"),
        (b"ID3\x03" + bytes(100), "not a WAV file"),
        (b"", "not a WAV file"),
    ],
)
def test_unplayable_files_are_explained(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, "bad.wav", content)
    with pytest.raises(PromptError) as caught:
        read_wav(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_conversion_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "cd.wav", wav_bytes(TONE, rate=44100))
    with pytest.raises(PromptError, match="sox IN.wav -r 8000 -c 1 -b 16"):
        probe_wav(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="no such sound file"):
        probe_wav(tmp_path / "nope.wav")
    with pytest.raises(PromptError, match="folder"):
        probe_wav(tmp_path)


def test_too_many_chunks_is_bounded(tmp_path: Path) -> None:
    junk = b"".join(b"junk" + struct.pack("<I", 0) for _ in range(200))
    path = write(tmp_path, "many.wav", wav_bytes(TONE, extra_chunks=junk))
    with pytest.raises(PromptError, match="without a data chunk"):
        probe_wav(path)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
@pytest.mark.parametrize(
    "args, ok",
    [
        (["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"], True),
        (["-r", "8000", "-c", "1", "-e", "u-law"], True),
        (["-r", "8000", "-c", "1", "-e", "a-law"], True),
        (["-r", "16000", "-c", "1", "-b", "16"], False),
        (["-r", "8000", "-c", "2", "-b", "16"], False),
        (["-r", "8000", "-c", "1", "-e", "ima-adpcm"], False),
        (["-r", "8000", "-c", "1", "-b", "24"], False),
    ],
)
def test_files_made_by_sox(tmp_path: Path, args: list[str], ok: bool) -> None:
    source = write(tmp_path, "in.wav", wav_bytes(TONE))
    target = tmp_path / "out.wav"
    subprocess.run(["sox", "-D", str(source), *args, str(target)], check=True, timeout=30)
    if ok:
        assert len(read_wav(target)) == len(TONE)
    else:
        with pytest.raises(PromptError):
            read_wav(target)


def test_write_wav_is_read_by_the_wave_module(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_wav(path, TONE + b"\x01")
    with wave.open(str(path)) as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getsampwidth()) == (1, 8000, 2)
        assert reader.readframes(10_000) == TONE
    assert read_wav(path) == TONE


def test_wav_writer_fills_in_sizes(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    with WavWriter(path) as writer:
        writer.write(TONE[:320])
        writer.write(TONE[320:])
        assert writer.seconds == pytest.approx(0.1)
    assert read_wav(path) == TONE
    with pytest.raises(ValueError):
        writer.write(TONE)
    writer.close()  # twice is fine
