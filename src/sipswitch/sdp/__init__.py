"""SDP: the session description model, parsing and serialisation, and audio offer/answer."""

from .model import (
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_SIZE,
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
    parse,
)
from .negotiate import (
    AUDIO_CODECS,
    AudioChoice,
    NoCommonCodec,
    accept_answer,
    answer,
    make_offer,
    rewrite_address,
)

__all__ = [
    "AUDIO_CODECS",
    "MAX_LINES",
    "MAX_MEDIA",
    "MAX_SDP_SIZE",
    "Attribute",
    "AudioChoice",
    "Connection",
    "MediaDescription",
    "NoCommonCodec",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "accept_answer",
    "answer",
    "make_offer",
    "parse",
    "rewrite_address",
]
