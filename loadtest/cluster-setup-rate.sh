#!/usr/bin/env bash
# Call set-ups per second through Kamailio against a node alone, on this machine: sipp places
# CALLS calls (INVITE, 200, ACK, BYE, 200, no media; one session each, made first through
# the API) at each rate in RATES, in three set-ups from scripts/cluster:
#   alone       one node, sipp straight at it
#   kamailio-1  the same node behind Kamailio
#   kamailio-2  two nodes behind Kamailio (sessions made on both APIs; whichever node a call
#               reaches claims its session from the shared database)
# and reads the CPU time Kamailio's and the nodes' processes used (/proc), per call.
# Bounded and on loopback only.
#   loadtest/cluster-setup-rate.sh [CALLS] [RATES]     e.g. loadtest/cluster-setup-rate.sh 1000 "200 400"
set -euo pipefail
CALLS=${1:-1000}
RATES=${2:-"200 400"}
cd "$(dirname "$0")/.."
command -v sipp >/dev/null || { echo "sipp missing: apt-get install -y sip-tester" >&2; exit 1; }
cargo build --release --quiet --bin tonewall
export TONEWALL_BIN=$PWD/target/release/tonewall
WORK=$(mktemp -d)
export TONEWALL_CLUSTER_DIR=$WORK/cluster
trap 'scripts/cluster stop >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
# The caller follows the route set Kamailio records (ACK and BYE to the Contact, via Route),
# and takes a 180 that arrives after the 200 (Kamailio's workers may pass them on in either
# order over UDP).
sed -e 's/\[service\]/[field0]/g' -e '/<pause milliseconds="PAUSE_MS"\/>/d' \
    -e 's|<recv response="200" crlf="true"/>|<recv response="180" optional="true"/>\n  <recv response="200" crlf="true"/>|' \
    -e 's|<recv response="200" rtd="true">|<recv response="200" rtd="true" rrs="true">|' \
    -e 's|ACK sip:\[field0\]@\[remote_ip\]:\[remote_port\] SIP/2.0|ACK [next_url] SIP/2.0\n      [routes]|' \
    -e 's|BYE sip:\[field0\]@\[remote_ip\]:\[remote_port\] SIP/2.0|BYE [next_url] SIP/2.0\n      [routes]|' \
    tests/sipp/basic_call.xml > "$WORK/setup.xml"

# Clock ticks of CPU used so far by every process whose command name is $1.
cpu_of() {
  # Through cat: a process that ends between the glob and the read must not fail the sum.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v name="($1)" '$2 == name { s += $14 + $15 } END { print s + 0 }'
}

printf "%-11s %-6s %-9s %-9s %-7s %-8s %-18s %-18s\n" setup rate attempted succeeded failed "calls/s" "kamailio ms/call" "tonewall ms/call"
run() { # setup nodes sip-target
  local setup=$1 nodes=$2 target=$3
  scripts/cluster stop >/dev/null 2>&1 || true
  scripts/cluster start "$nodes" > "$WORK/start.log"
  local key
  key=$("$TONEWALL_BIN" api-key create --role agent --config "$TONEWALL_CLUSTER_DIR/node1/tonewall.toml" \
    --data-dir "$TONEWALL_CLUSTER_DIR/node1/data")
  for RATE in $RATES; do
    echo SEQUENTIAL > "$WORK/users.csv"
    for i in $(seq "$CALLS"); do
      local api=http://127.0.0.$(( (i % nodes) + 2 )):8080
      curl -s -X POST -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"fields":["pan"]}' "$api/v1/sessions" | sed -e 's/.*"id":"\([0-9a-f]*\)".*/pay-\1;\n/' >> "$WORK/users.csv"
    done
    local hz k0 t0 start end k1 t1
    hz=$(getconf CLK_TCK)
    k0=$(cpu_of kamailio); t0=$(cpu_of tonewall)
    start=$(date +%s.%N)
    sipp "$target" -sf "$WORK/setup.xml" -inf "$WORK/users.csv" -r "$RATE" -m "$CALLS" -l 5000 \
      -i 127.0.0.1 -p 0 -nostdin -timeout 120s -trace_stat -stf "$WORK/stat.csv" -fd 1 \
      -trace_err -error_file "$WORK/errors.log" > /dev/null 2>&1 || true
    end=$(date +%s.%N)
    k1=$(cpu_of kamailio); t1=$(cpu_of tonewall)
    python3 - "$WORK/stat.csv" "$start" "$end" "$setup" "$RATE" "$((k1 - k0))" "$((t1 - t0))" "$hz" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';'))
head, last = rows[0], rows[-1]
col = lambda name: int(last[head.index(name)])
ok, failed = col("SuccessfulCall(C)"), col("FailedCall(C)")
elapsed = float(sys.argv[3]) - float(sys.argv[2])
hz = int(sys.argv[8])
per_call = lambda ticks: 1000.0 * int(ticks) / hz / max(ok + failed, 1)
print(f"{sys.argv[4]:<11} {sys.argv[5]:<6} {ok + failed:<9} {ok:<9} {failed:<7} {ok / elapsed:<8.0f} "
      f"{per_call(sys.argv[6]):<18.2f} {per_call(sys.argv[7]):<18.2f}")
PY
  done
}
run alone 1 127.0.0.2:5060
run kamailio-1 1 127.0.0.1:5070
run kamailio-2 2 127.0.0.1:5070
