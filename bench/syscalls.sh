#!/usr/bin/env bash
# System calls per request made by mirror-proxy: without mirroring, mirroring 100 % to a fast
# shadow over HTTP/1.1, and the same over h2c (`http2 = true`). Counted by `perf stat` on the
# kernel's syscall tracepoints (no ptrace, so the proxy runs at full speed) while wrk loads it.
#
#   bench/syscalls.sh          # 64 connections, 2 s warm-up, 8 s run, 4 s counted in its middle
#
# Needs perf and wrk (bench/run.sh installs wrk). Everything listens on 127.0.0.1; every step
# is bounded by `timeout`. Prints one markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in perf wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
PORT=${PORT_BASE:-19500}
WORKERS=${WORKERS:-$(nproc)}
timeout 1800 cargo build --release --locked -q -p mirror-bench-origin -p mirror-proxy
bin=target/release
work=$(mktemp -d /tmp/mirror-syscalls.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

upstream=$PORT shadow=$((PORT + 1)) listen=$((PORT + 2))
"$bin/mirror-bench-origin" --listen "127.0.0.1:$upstream" --stats "127.0.0.1:$((PORT + 10))" \
  >/dev/null 2>&1 & pids+=($!)
"$bin/mirror-bench-origin" --listen "127.0.0.1:$shadow" --stats "127.0.0.1:$((PORT + 11))" \
  >/dev/null 2>&1 & pids+=($!)
printf '[[mirror]]\nurl = "http://127.0.0.1:%s"\nhttp2 = true\n' "$shadow" >"$work/h2c.toml"

calls="recvfrom read writev write epoll_wait epoll_ctl futex connect"
events=$(for c in $calls; do printf 'syscalls:sys_enter_%s,' "$c"; done)raw_syscalls:sys_enter

# measure LABEL PROXY_ARGS...: one table row.
measure() {
  local label=$1 proxy
  shift
  "$bin/mirror-proxy" --listen "127.0.0.1:$listen" --upstream "http://127.0.0.1:$upstream" \
    --workers "$WORKERS" "$@" >"$work/proxy.out" 2>&1 &
  proxy=$!
  for _ in $(seq 100); do grep -q listening "$work/proxy.out" && break; sleep 0.05; done
  timeout 10 wrk -t2 -c64 -d2s "http://127.0.0.1:$listen/" >/dev/null
  timeout 20 wrk -t2 -c64 -d8s "http://127.0.0.1:$listen/" >"$work/wrk.txt" &
  local load=$!
  sleep 2
  timeout 10 perf stat -x, -e "$events" -p "$proxy" -- sleep 4 2>"$work/perf.txt"
  wait "$load"
  kill -TERM "$proxy"
  wait "$proxy" || true
  local rate
  rate=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  # wrk's rate over its whole run stands in for the rate in the counted 4 s.
  awk -F, -v label="$label" -v rate="$rate" -v calls="$calls" '
    { sub("syscalls:sys_enter_", "", $3); count[$3] = $1 }
    END {
      n = split(calls, name, " ")
      line = sprintf("| %s | %.0f |", label, rate)
      for (i = 1; i <= n; i++) line = line sprintf(" %.2f |", count[name[i]] / (rate * 4))
      print line sprintf(" **%.2f** |", count["raw_syscalls:sys_enter"] / (rate * 4))
    }' "$work/perf.txt"
}

header="| mirror-proxy | req/s |"
rule="|---|---:|"
for c in $calls; do header="$header $c |"; rule="$rule---:|"; done
echo "$header all |"
echo "$rule---:|"
measure "no mirroring"
measure "mirror 100 %, HTTP/1.1" --mirror "http://127.0.0.1:$shadow"
measure "mirror 100 %, h2c" --config "$work/h2c.toml"
echo
echo "System calls per request. Command: bench/syscalls.sh ($(date -u '+%F %H:%M') UTC, $(git rev-parse --short HEAD), $WORKERS workers)"
