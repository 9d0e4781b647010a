#!/usr/bin/env bash
# Makes the default voice prompts shipped in src/sipswitch/media/voice/: English speech from
# espeak-ng, resampled by sox to 8 kHz mono 16-bit PCM (the telephone format the media layer
# plays), leading and trailing silence trimmed, normalised to -3 dBFS, no dither (so the same
# tools give the same files). The files are committed; this script is only needed to change
# them.
#
#   apt-get install espeak-ng sox
#   bash scripts/make-prompts.sh
set -euo pipefail

OUT="$(cd "$(dirname "$0")/.." && pwd)/src/sipswitch/media/voice"
VOICE="${VOICE:-en-us}"
SPEED="${SPEED:-150}"

mkdir -p "$OUT"

say() {
    local name=$1 text=$2
    espeak-ng -v "$VOICE" -s "$SPEED" --stdout "$text" \
        | sox -D -t wav - -r 8000 -c 1 -b 16 -e signed-integer "$OUT/$name.wav" \
            highpass 100 lowpass 3400 \
            silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \
            norm -3 pad 0.05 0.15
    echo "$OUT/$name.wav"
}

say welcome "Welcome. Please enter the extension number."
say enter-extension "Please enter the extension number."
say invalid "That is not a valid entry."
say please-hold "Please hold while we connect your call."
say busy "The person you are calling is busy."
say no-answer "The person you are calling does not answer."
say goodbye "Goodbye."
say forwarding-set "Call forwarding is set to"
say forwarding-cleared "Call forwarding is cleared."

digits=(zero one two three four five six seven eight nine)
for d in "${!digits[@]}"; do
    say "digit-$d" "${digits[$d]}"
done
