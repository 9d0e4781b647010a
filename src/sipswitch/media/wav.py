"""WAV files for prompts and recordings: reading 8 kHz mono 16-bit PCM or G.711 (µ-law/A-law)
files with a plain error for any other layout, and writing 16-bit 8 kHz mono files.

Prompts are checked when a script loads (``probe_wav``), so a bad file is reported then, not in
the middle of a call.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .g711 import alaw_decode, ulaw_decode

SAMPLE_RATE = 8000
MAX_WAV_SIZE = 64 * 1024 * 1024  # about 70 minutes of 16-bit audio
MAX_CHUNKS = 64

FORMAT_PCM = 0x0001
FORMAT_ALAW = 0x0006
FORMAT_ULAW = 0x0007
FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    FORMAT_PCM: "PCM",
    FORMAT_ALAW: "A-law",
    FORMAT_ULAW: "µ-law",
    0x0003: "32-bit float",
    0x0011: "IMA ADPCM",
    0x0002: "MS ADPCM",
    0x0055: "MP3",
    0x0031: "GSM 6.10",
}
# The GUID tail that marks a WAVE_FORMAT_EXTENSIBLE subformat as one of the classic tags.
_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

CONVERT_HINT = "convert it with: sox IN.wav -r 8000 -c 1 -b 16 -e signed-integer OUT.wav"


class PromptError(ValueError):
    """A sound file that cannot be played: missing, not WAV, or not 8 kHz mono PCM/G.711."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    """What a WAV file holds: its format tag, layout, and where the samples are."""

    path: Path
    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    data_offset: int
    data_size: int

    @property
    def format_name(self) -> str:
        return _FORMAT_NAMES.get(self.format_tag, f"format 0x{self.format_tag:04x}")

    @property
    def samples(self) -> int:
        return self.data_size // max(1, self.bits_per_sample // 8)

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


def _fail(path: Path, reason: str) -> PromptError:
    return PromptError(f"{path}: {reason}")


def probe_wav(path: str | os.PathLike[str]) -> WavInfo:
    """Read and check a WAV file's header. Raises ``PromptError`` naming the file and what is
    wrong (not found, not a WAV file, truncated, sample rate, channels, format)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            return _probe(path, handle, size)
    except FileNotFoundError:
        raise _fail(path, "no such sound file") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not a sound file") from None
    except PermissionError:
        raise _fail(path, "cannot be read (permission denied)") from None


def _probe(path: Path, handle: BinaryIO, size: int) -> WavInfo:
    if size > MAX_WAV_SIZE:
        raise _fail(path, f"too large for a prompt ({size} bytes; at most {MAX_WAV_SIZE})")
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise _fail(path, "not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    offset = 12
    for _ in range(MAX_CHUNKS):
        handle.seek(offset)
        chunk = handle.read(8)
        if len(chunk) < 8:
            break
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            data = handle.read(min(chunk_size, 64))
            if chunk_size < 16 or len(data) < 16:
                raise _fail(path, "truncated WAV format chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[:16])
            if tag == FORMAT_EXTENSIBLE:
                if len(data) < 40 or data[26:40] != _KSDATAFORMAT_TAIL:
                    raise _fail(path, "unsupported WAVE_FORMAT_EXTENSIBLE subformat")
                tag = struct.unpack("<H", data[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise _fail(path, "WAV data chunk before the format chunk")
            if body + chunk_size > size:
                raise _fail(
                    path,
                    f"truncated: the data chunk announces {chunk_size} bytes, "
                    f"the file holds {max(0, size - body)}",
                )
            return _check_format(path, fmt, body, chunk_size)
        offset = body + chunk_size + (chunk_size & 1)
        if offset > size:
            raise _fail(path, f"truncated inside the {chunk_id.decode('latin-1')!r} chunk")
    if fmt is None:
        raise _fail(path, "WAV file without a format chunk")
    raise _fail(path, "WAV file without a data chunk")


def _check_format(path: Path, fmt: tuple[int, int, int, int], offset: int, size: int) -> WavInfo:
    tag, channels, rate, bits = fmt
    info = WavInfo(path, tag, channels, rate, bits, offset, size)
    if tag not in (FORMAT_PCM, FORMAT_ULAW, FORMAT_ALAW):
        raise _fail(path, f"{info.format_name} audio is not supported; {CONVERT_HINT}")
    if rate != SAMPLE_RATE:
        raise _fail(path, f"sample rate is {rate} Hz, prompts must be 8000 Hz; {CONVERT_HINT}")
    if channels != 1:
        raise _fail(path, f"{channels} channels, prompts must be mono; {CONVERT_HINT}")
    wanted = 16 if tag == FORMAT_PCM else 8
    if bits != wanted:
        raise _fail(
            path, f"{bits}-bit {info.format_name}, expected {wanted}-bit; {CONVERT_HINT}"
        )
    return info


def read_wav(path: str | os.PathLike[str]) -> bytes:
    """The samples of a prompt file as 16-bit little-endian PCM at 8 kHz (G.711 files are
    decoded). Raises ``PromptError``."""
    info = probe_wav(path)
    try:
        with info.path.open("rb") as handle:
            handle.seek(info.data_offset)
            data = handle.read(info.data_size)
    except OSError as exc:
        raise _fail(info.path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) < info.data_size:
        raise _fail(info.path, "truncated while reading")
    if info.format_tag == FORMAT_ULAW:
        return ulaw_decode(data)
    if info.format_tag == FORMAT_ALAW:
        return alaw_decode(data)
    return data[: len(data) & ~1]


def wav_header(data_size: int) -> bytes:
    """A 44-byte header for 16-bit 8 kHz mono PCM with ``data_size`` bytes of samples."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_size,
        b"WAVE",
        b"fmt ",
        16,
        FORMAT_PCM,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        data_size,
    )


def write_wav(path: str | os.PathLike[str], pcm: bytes) -> None:
    """Write 16-bit 8 kHz mono PCM as a WAV file."""
    pcm = pcm[: len(pcm) & ~1]
    with open(path, "wb") as handle:
        handle.write(wav_header(len(pcm)))
        handle.write(pcm)


class WavWriter:
    """A WAV file written as audio arrives (a recording); the header's sizes are filled in by
    ``close``, so a recording cut short by a crash is still readable up to its last flush."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115
        self._handle.write(wav_header(0))
        self.bytes_written = 0

    @property
    def seconds(self) -> float:
        return self.bytes_written / (2 * SAMPLE_RATE)

    def write(self, pcm: bytes) -> None:
        if self._handle is None:
            raise ValueError("recording already closed")
        pcm = pcm[: len(pcm) & ~1]
        self._handle.write(pcm)
        self.bytes_written += len(pcm)

    def close(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.seek(0)
            handle.write(wav_header(self.bytes_written))
        finally:
            handle.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
