#!/usr/bin/env bash
# Call set-ups per second that sipp reaches against `tonewall serve` over UDP on loopback:
# one session per call (created through the API first), then sipp places the calls at a
# fixed rate (INVITE, 200, ACK, BYE, 200, no media) from an injection file of session URIs.
# Bounded: CALLS calls at each rate in RATES, loopback only.
#   loadtest/sipp-setup-rate.sh [CALLS] [RATES]      e.g. loadtest/sipp-setup-rate.sh 2000 "200 400 600"
set -euo pipefail
CALLS=${1:-2000}
RATES=${2:-"200 400 600 800"}
cd "$(dirname "$0")/.."
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/tonewall
WORK=$(mktemp -d); echo "work dir $WORK" >&2
trap 'kill $SERVE_PID 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
sed -e 's/^rate_per_source = .*/rate_per_source = 100000/' sip-config/tonewall.toml > "$WORK/tonewall.toml"
KEY=$($BIN api-key create --role agent --data-dir "$WORK/data")
$BIN serve --config "$WORK/tonewall.toml" --data-dir "$WORK/data" --sip-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 > "$WORK/serve.out" 2> "$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do grep -q "tonewall serving" "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
SIP=$(grep -o 'udp:[^ ]*' "$WORK/serve.out" | cut -d: -f2-)
HTTP=$(grep -o 'http://[^ ]*' "$WORK/serve.out")
sed -e 's/\[service\]/[field0]/g' -e 's/PAUSE_MS/0/' tests/sipp/basic_call.xml > "$WORK/setup.xml"
printf "%-8s %-10s %-10s %-8s %-10s\n" rate attempted succeeded failed "calls/s"
for RATE in $RATES; do
  echo SEQUENTIAL > "$WORK/users.csv"
  for _ in $(seq "$CALLS"); do
    curl -s -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
      -d '{"fields":["pan"]}' "$HTTP/v1/sessions" | sed -e 's/.*"id":"\([0-9a-f]*\)".*/pay-\1;\n/' >> "$WORK/users.csv"
  done
  START=$(date +%s.%N)
  sipp "$SIP" -sf "$WORK/setup.xml" -inf "$WORK/users.csv" -r "$RATE" -m "$CALLS" -l 5000 \
    -i 127.0.0.1 -p 0 -nostdin -timeout 120s -trace_stat -stf "$WORK/stat.csv" -fd 1 \
    -trace_err -error_file "$WORK/errors.log" > /dev/null 2>&1 || true
  END=$(date +%s.%N)
  python3 - "$WORK/stat.csv" "$START" "$END" "$RATE" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';'))
head, last = rows[0], rows[-1]
col = lambda name: int(last[head.index(name)])
ok, failed = col("SuccessfulCall(C)"), col("FailedCall(C)")
elapsed = float(sys.argv[3]) - float(sys.argv[2])
print(f"{sys.argv[4]:<8} {ok + failed:<10} {ok:<10} {failed:<8} {ok / elapsed:<10.0f}")
PY
done
