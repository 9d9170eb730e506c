#!/usr/bin/env bash
# Regenerates one language's recordings (8 kHz, mono, 16-bit PCM) from prompts/<lang>/:
# every [name] of manifest.toml from its text, and the numbers n0 to n99 from their digits,
# which espeak-ng says by the language's own rules. Silence is trimmed from both ends so
# that joined words (amounts, last four digits) follow each other closely.
# Needs: apt-get install -y espeak-ng sox. The WAVs are committed; CI does not run this.
set -euo pipefail
cd "$(dirname "$0")"
lang=${1:?usage: prompts/generate.sh en|es|fr|de}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { # name text
  espeak-ng -v "$lang" -s 150 -w "$tmp/$1.wav" "$2"
  sox "$tmp/$1.wav" -r 8000 -c 1 -b 16 "$lang/$1.wav" \
    silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0 0.06 norm -6
}
grep -E '^\[|^text' "$lang/manifest.toml" | paste - - | while IFS= read -r line; do
  name=$(sed -E 's/^\[([a-z0-9_]+)\].*/\1/' <<<"$line")
  text=$(sed -E 's/.*text = "(.*)"$/\1/' <<<"$line")
  say "$name" "$text"
done
for n in $(seq 0 99); do
  say "n$n" "$n"
done
