#!/usr/bin/env bash
# Instructions per call of one gRPC method, counted by valgrind's callgrind:
# a figure the machine's noise does not move (see docs/performance.md).
#
#   benches/callgrind.sh DATA_DIR METHOD_PATH BODY CALLS
#
# Starts the release server under callgrind on DATA_DIR (the data dir is used
# as it is: pass a copy for writes), sends 50 warm-up calls, then counts only
# while h2load sends CALLS calls (C clients, M streams each; default 16/16),
# and prints the server's instructions per call (every thread, the kernel's
# work excluded). Scans may queue as long as they need (callgrind runs the
# server some 50 times slower; a shed List would count as a cheap call: h2load
# counts a gRPC error as a success, so compare its DATA bytes with calls x the
# response size). The profile is left in target/callgrind.out for
# callgrind_annotate. Request bodies: `BODIES_DIR=dir cargo bench --bench
# service` keeps them. Needs valgrind and h2load (Debian: valgrind,
# nghttp2-client); BIN overrides the server binary.
set -euo pipefail
[ $# -eq 4 ] || { sed -n '5,17p' "$0"; exit 2; }
dir=$1 path=$2 body=$3 calls=$4
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/cooperation-registry}
port=${PORT:-50998}
out=$root/target/callgrind.out
[ -x "$bin" ] || (cd "$root" && cargo build --release)
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir" --max-scan-wait-ms 3600000 --max-queued-scans 100000 \
    > "$root/target/callgrind.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    ss -ltn | grep -q ":$port " && break
    kill -0 $server 2>/dev/null || { cat "$root/target/callgrind.log"; exit 1; }
    sleep 0.5
done
h2load_calls() {
    h2load -n "$1" -c "$2" -m "$3" -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port$path" | grep -E '^(requests|traffic):'
}
h2load_calls 50 1 1 > /dev/null
callgrind_control -i on $server > /dev/null 2>&1
h2load_calls "$calls" "${C:-16}" "${M:-16}"
callgrind_control -i off $server > /dev/null 2>&1
kill -TERM $server
wait $server || true
trap - EXIT
total=$(awk '/^totals:/ {print $2}' "$out")
echo "instructions per call: $((total / calls))  (profile: $out)"
