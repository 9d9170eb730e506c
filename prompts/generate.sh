#!/usr/bin/env bash
# Regenerates the prompt WAVs (8 kHz, mono, 16-bit PCM) from prompts/<lang>/manifest.toml texts.
# Needs: apt-get install -y espeak-ng sox. The WAVs are committed; CI does not run this.
set -euo pipefail
cd "$(dirname "$0")"
lang=${1:-en}
grep -E '^\[|^text' "$lang/manifest.toml" | paste - - | while IFS= read -r line; do
  name=$(sed -E 's/^\[([a-z_]+)\].*/\1/' <<<"$line")
  text=$(sed -E 's/.*text = "(.*)"$/\1/' <<<"$line")
  espeak-ng -v "$lang" -s 150 -w "/tmp/prompt-$name.wav" "$text"
  sox "/tmp/prompt-$name.wav" -r 8000 -c 1 -b 16 "$lang/$name.wav" norm -6
  rm -f "/tmp/prompt-$name.wav"
done
