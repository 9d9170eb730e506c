#!/usr/bin/env bash
# Masked-call capacity through Kamailio against a node alone, on this machine: the load tool
# (real SIP calls, RTP both ways, cards keyed by RFC 4733 and in-band, leaks judged) ramps
# through LEVELS concurrent calls in three set-ups from scripts/cluster:
#   alone       one node, the load tool straight at it
#   kamailio-1  the same node behind Kamailio
#   kamailio-2  two nodes behind Kamailio (sessions made on both APIs in turn)
# and prints, per level, relay latency, loss, leaks, the CPU of the nodes (from /proc, each
# node's share) and Kamailio's CPU over the whole run. Bounded (the load tool's own limits)
# and on loopback only.
#   loadtest/cluster-capacity.sh [LEVELS] [RATE]     e.g. loadtest/cluster-capacity.sh 50,100,200 25
set -euo pipefail
LEVELS=${1:-50,100,200}
RATE=${2:-25}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p tonewall --bin tonewall
cargo build --release --quiet -p tonewall-loadtest --bin loadtest
export TONEWALL_BIN=$PWD/target/release/tonewall
WORK=$(mktemp -d)
export TONEWALL_CLUSTER_DIR=$WORK/cluster
trap 'scripts/cluster stop >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# Clock ticks of CPU used so far by every process whose command name is $1.
cpu_of() {
  # Through cat: a process that ends between the glob and the read must not fail the sum.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v name="($1)" '$2 == name { s += $14 + $15 } END { print s + 0 }'
}

run() { # setup nodes sip-target
  local setup=$1 nodes=$2 target=$3
  scripts/cluster stop >/dev/null 2>&1 || true
  scripts/cluster start "$nodes" > "$WORK/start.log"
  local cfg="$TONEWALL_CLUSTER_DIR/node1/tonewall.toml" data="$TONEWALL_CLUSTER_DIR/node1/data"
  local agent processor apis="" k0 t0 start
  agent=$("$TONEWALL_BIN" api-key create --role agent --config "$cfg" --data-dir "$data")
  processor=$("$TONEWALL_BIN" api-key create --role processor --config "$cfg" --data-dir "$data")
  for i in $(seq "$nodes"); do apis="$apis${apis:+,}http://127.0.0.$((i + 1)):8080"; done
  k0=$(cpu_of kamailio); t0=$(cpu_of tonewall); start=$(date +%s.%N)
  target/release/loadtest --target "$target" --api "$apis" --api-key "$agent" --processor-key "$processor" \
    --ramp "$LEVELS" --rate "$RATE" --duration 10 --server-pid "$(cat "$TONEWALL_CLUSTER_DIR/node1/pid")" \
    --json "$WORK/$setup.json" > "$WORK/$setup.out" 2>&1 || { cat "$WORK/$setup.out"; exit 1; }
  python3 - "$WORK/$setup.json" "$setup" "$nodes" "$(( $(cpu_of kamailio) - k0 ))" "$(( $(cpu_of tonewall) - t0 ))" \
    "$(getconf CLK_TCK)" "$start" "$(date +%s.%N)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
setup, nodes, k, t, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
secs = float(sys.argv[8]) - float(sys.argv[7])
for s in r["steps"]:
    print(f"{setup:<11} {s['calls']:>6} {s['latency_ms']['p50']:>7.2f} {s['latency_ms']['p99']:>7.2f} "
          f"{s['loss']:>9.5f} {s['leaks']['digits'] + s['leaks']['rfc4733_packets']:>6} "
          f"{s['cpu_percent']:>10.0f}% x{nodes}")
cap = r["capture"]
print(f"{setup:<11} attempted {r['calls']['attempted']}, failed {r['calls']['failed']}, cards whole "
      f"{cap['rfc4733']['right'] + cap['in_band']['right']}/{cap['rfc4733']['attempted'] + cap['in_band']['attempted']}; "
      f"over the run ({secs:.0f} s): Kamailio {100.0 * k / hz / secs:.1f}% of a core, "
      f"tonewall nodes {100.0 * t / hz / secs:.0f}%")
PY
}
printf "%-11s %6s %7s %7s %9s %6s %11s\n" setup calls "p50 ms" "p99 ms" loss leaks "node CPU"
run alone 1 127.0.0.2:5060
run kamailio-1 1 127.0.0.1:5070
run kamailio-2 2 127.0.0.1:5070
