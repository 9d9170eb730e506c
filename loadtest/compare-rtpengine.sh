#!/usr/bin/env bash
# The same media load through rtpengine and through tonewall, on this machine, in one run:
#   1. rtpengine relaying plain G.711 (userspace, --table=-1);
#   2. rtpengine masking: `block DTMF` with `detect DTMF` and a delay buffer (DELAY_MS) so it
#      replaces tones from their onset;
#   3. tonewall with in-band detection and masking on every call (mask_outside_capture);
#   4. the same with call recording off (rtpengine records nothing; this shows what the
#      encrypted stereo recording of every call costs).
# Each is a ramp of LEVELS concurrent calls, DURATION seconds measured at each, driven by
# target/release/loadtest (rtpengine over its ng protocol, tonewall over SIP + its API).
# Prints each system's latency, loss, leaks and CPU per level, the capacity of each (the
# highest level with loss < 0.01%, p99 less than 5 ms above the system's own buffering delay
# and, for the masking systems, no leak), the ratios, and the added latency at the lowest
# level. Loopback only; bounded.
#   loadtest/compare-rtpengine.sh [LEVELS] [DURATION] [DELAY_MS]
#   e.g. loadtest/compare-rtpengine.sh 100,200,300,400,500,600 15 40
# OUT=DIR keeps the three SVG charts there (default: the throw-away work dir).
set -euo pipefail
LEVELS=${1:-100,200,300,400,500}
DURATION=${2:-15}
DELAY_MS=${3:-40}
RATE=${RATE:-200}
cd "$(dirname "$0")/.."
command -v rtpengine >/dev/null || { echo "rtpengine missing: apt-get install -y rtpengine-daemon" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 missing: apt-get install -y python3" >&2; exit 1; }
cargo build --release --quiet -p tonewall -p tonewall-loadtest
WORK=$(mktemp -d); echo "work dir $WORK" >&2
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

NG=127.0.0.1:22299
rtpengine --foreground --table=-1 --interface=127.0.0.1 --listen-ng=$NG --port-min=30000 \
  --port-max=39999 --log-level=3 --log-stderr --delete-delay=0 --no-redis-required \
  > "$WORK/rtpengine.log" 2>&1 &
PIDS+=($!)

sed -e 's/^rate_per_source = .*/rate_per_source = 100000/' \
    -e 's/^mask_outside_capture = .*/mask_outside_capture = true/' \
    -e 's/^listen = "127.0.0.1:5060"/listen = "127.0.0.1:25060"/' \
    -e 's/^listen = "127.0.0.1:8080"/listen = "127.0.0.1:28080"/' \
    sip-config/tonewall.toml > "$WORK/tonewall.toml"
sed -e 's/^enabled = true/enabled = false/' -e 's/25060/25061/' -e 's/28080/28081/' \
  "$WORK/tonewall.toml" > "$WORK/tonewall-norec.toml"
for c in tonewall tonewall-norec; do
  target/release/tonewall api-key create --role agent --data-dir "$WORK/$c" > "$WORK/$c.key"
  target/release/tonewall api-key create --role processor --data-dir "$WORK/$c" > "$WORK/$c.processor-key"
  target/release/tonewall serve --config "$WORK/$c.toml" --data-dir "$WORK/$c" \
    > "$WORK/$c.out" 2> "$WORK/$c.log" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q "tonewall serving" "$WORK/$c.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "tonewall serving" "$WORK/$c.out" || { echo "tonewall did not start:"; cat "$WORK/$c.log"; exit 1; }
done

# A run that fails (a system that breaks down under the ramp) leaves no JSON; the summary
# says so and the other runs still happen.
LT=(target/release/loadtest --ramp "$LEVELS" --rate "$RATE" --duration "$DURATION")
OUT=${OUT:-$WORK}
echo "== rtpengine, plain relay"
"${LT[@]}" --rtpengine $NG --json "$WORK/rtpengine-plain.json" --svg "$OUT/rtpengine-plain.svg" || true
echo "== rtpengine, block DTMF + detect DTMF + ${DELAY_MS} ms delay buffer"
"${LT[@]}" --rtpengine $NG --rtpengine-masking-ms "$DELAY_MS" --json "$WORK/rtpengine-masking.json" \
  --svg "$OUT/rtpengine-masking.svg" || true
echo "== tonewall, detection and masking on every call"
"${LT[@]}" --target 127.0.0.1:25060 --api http://127.0.0.1:28080 --api-key "$(cat "$WORK/tonewall.key")" \
  --processor-key "$(cat "$WORK/tonewall.processor-key")" \
  --json "$WORK/tonewall.json" --svg "$OUT/tonewall.svg" || true
echo "== tonewall, detection and masking on every call, recording off"
"${LT[@]}" --target 127.0.0.1:25061 --api http://127.0.0.1:28081 --api-key "$(cat "$WORK/tonewall-norec.key")" \
  --processor-key "$(cat "$WORK/tonewall-norec.processor-key")" \
  --json "$WORK/tonewall-norec.json" --svg "$OUT/tonewall-norec.svg" || true

python3 - "$WORK" "$DELAY_MS" <<'PY'
import json, sys
work, delay = sys.argv[1], float(sys.argv[2])
runs = [("rtpengine plain", "rtpengine-plain", 0.0),
        ("rtpengine masking", "rtpengine-masking", delay),
        # tonewall's masker holds 20 ms of look-ahead while masking.
        ("tonewall masking", "tonewall", 20.0),
        ("tonewall, no recording", "tonewall-norec", 20.0)]
import os
data = {}
for name, f, _ in runs:
    path = f"{work}/{f}.json"
    if os.path.exists(path):
        data[name] = json.load(open(path))
    else:
        print(f"{name}: the run did not finish (see its output above); left out")
runs = [r for r in runs if r[0] in data]
if "tonewall masking" not in data:
    sys.exit(1)
def ok(name, step, buffered):
    leaks = step["leaks"]["digits"] + step["leaks"]["rfc4733_packets"]
    masking = name != "rtpengine plain"
    return step["loss"] < 1e-4 and step["latency_ms"]["p99"] - buffered < 5.0 and not (masking and leaks)
print()
print(f"{'calls':>6}  " + "  ".join(f"{n:>34}" for n, _, _ in runs))
print(f"{'':>6}  " + "  ".join(f"{'(server CPU, % of one core)':>34}" for _ in runs))
print(f"{'':>6}  " + "  ".join(f"{'p50/p99 ms   loss    CPU  leaks':>34}" for _ in runs))
levels = [s["level"] for s in data["tonewall masking"]["steps"]]
for i, level in enumerate(levels):
    cells = []
    for n, _, _ in runs:
        if i >= len(data[n]["steps"]):
            cells.append("-")
            continue
        s = data[n]["steps"][i]
        leaks = s["leaks"]["digits"] + s["leaks"]["rfc4733_packets"]
        cells.append(f"{s['latency_ms']['p50']:6.2f}/{s['latency_ms']['p99']:6.2f} {s['loss']:8.5f} {s['cpu_percent']:5.0f}% {leaks:6d}")
    print(f"{level:>6}  " + "  ".join(f"{c:>34}" for c in cells))
cap = {}
for n, _, buffered in runs:
    good = [s["level"] for s in data[n]["steps"] if ok(n, s, buffered)]
    cap[n] = max(good) if good else 0
    top = data[n]["steps"][-1]
    print(f"{n}: capacity {cap[n]} calls (loss < 0.01%, p99 < {buffered + 5:.0f} ms); "
          f"{top['cpu_percent'] / max(top['calls'], 1):.3f}% CPU per call at {top['calls']}; "
          f"leaks {data[n]['leaks']['digits']} digits, {data[n]['leaks']['rfc4733_packets']} RFC 4733 packets")
for t in [r[0] for r in runs if r[0].startswith("tonewall")]:
    for n in [r[0] for r in runs if r[0].startswith("rtpengine")]:
        ratio = cap[t] / cap[n] if cap[n] else float("inf")
        print(f"capacity ratio {t} / {n}: {ratio:.2f}")
first = {n: data[n]["steps"][0]["latency_ms"] for n, _, _ in runs}
print("added latency at the lowest level (p50 / p99 ms): " +
      ", ".join(f"{n} {first[n]['p50']:.2f} / {first[n]['p99']:.2f}" for n, _, _ in runs))
PY
