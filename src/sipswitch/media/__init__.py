"""RTP media: packets, G.711, WAV prompts and recordings, DTMF, the port range and the
per-call media session."""
