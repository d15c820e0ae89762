#!/usr/bin/env bash
# How long a start after a crash takes when the server writes for long
# without checkpoints (--checkpoint-mib 0): sled replays at start what it
# logged since the data dir was last opened (see docs/performance.md).
#
#   benches/crash_start.sh DATA_DIR BODIES_DIR [ROUNDS] [SECONDS]
#
# Starts the release server on DATA_DIR (used as it is: pass a copy) pinned to
# core 0, with h2load on core 1, sends 20 s of CreateAgreement, then ROUNDS
# (default 5) rounds of SECONDS (default 40) of UpdateAgreement of one record,
# all without a restart, then kills the server (SIGKILL) and starts it again.
# Prints what the server wrote to the disk and the data dir's size after each
# round, and the seconds sled took to open the data dir at that start (the
# replay; the server logs it). With KILL_EACH_ROUND=1 it kills and restarts
# after every round instead, so that each start replays one round.
# Bodies: `BODIES_DIR=dir DATA_DIR=dir cargo bench --bench service` keeps
# them and the data dir they name. Needs h2load (Debian: nghttp2-client).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '5,17p' "$0"; exit 2; }
dir=$1 bodies=$2 rounds=${3:-5} seconds=${4:-40}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/target/release/cooperation-registry}
port=${PORT:-50997}
log=$root/target/crash_start.log
[ -x "$bin" ] || (cd "$root" && cargo build --release)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT

start() {
    : > "$log"
    RUST_LOG=info taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir" --checkpoint-mib 0 \
        >> "$log" 2>&1 &
    server=$!
    for _ in $(seq 1200); do
        grep -q "serving cooperation.v1" "$log" && return
        kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.05
    done
    echo "the server did not start"; exit 1
}

written_mib() {
    awk '/^write_bytes/ { print int($2 / 1048576) }' "/proc/$server/io"
}

crash_and_start() {
    local written
    written=$(written_mib)
    kill -KILL "$server"
    wait "$server" 2>/dev/null || true
    start
    echo "$1: the server wrote $written MiB; data dir $(du -sm "$dir" | cut -f1) MiB;" \
        "after a crash sled opened it in $(grep -o 'seconds=[0-9.]*' "$log" | head -1 | cut -d= -f2) s"
}

send() {
    taskset -c 1 h2load -c16 -m16 -D"$2" -d "$bodies/$1.bin" -H 'content-type: application/grpc' \
        -H 'te: trailers' "http://127.0.0.1:$port/cooperation.v1.AgreementService/$1" | grep -E '^finished'
}

start
send CreateAgreement 20
[ "${KILL_EACH_ROUND:-0}" = 1 ] && crash_and_start "after 20 s of creates"
for round in $(seq "$rounds"); do
    send UpdateAgreement "$seconds"
    [ "${KILL_EACH_ROUND:-0}" = 1 ] && crash_and_start "after update round $round"
done
[ "${KILL_EACH_ROUND:-0}" = 1 ] || crash_and_start "after 20 s of creates and $rounds rounds of updates"
