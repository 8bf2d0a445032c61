#!/usr/bin/env bash
# Instructions per request of the tower-mirror layer against the bare inner service, counted
# by valgrind (repeatable to the instruction, unlike timings on a shared machine). For each
# scenario and mode it runs N1 and N2 requests and reports (I(N2) - I(N1)) / (N2 - N1), which
# cancels the fixed start-up cost. Usage: bench/instructions.sh [N1 N2]
# SCENARIOS="a b ..." runs only those (default: every scenario of benches/support/mod.rs);
# the program is built in CARGO_TARGET_DIR when that is set, else in target/.
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${1:-2000}
n2=${2:-6000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
build_log=$(mktemp)
cargo bench -q -p tower-mirror --bench instructions --no-run >"$build_log" 2>&1 \
  || { cat "$build_log" >&2; rm -f "$build_log"; exit 1; }
rm -f "$build_log"
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/instructions-* | grep -v '\.d$' | head -n 1)
scenarios=${SCENARIOS:-$("$bin" list)}

count() { # scenario mode requests -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '| scenario | bare instr/req | mirrored instr/req | added by the layer |\n|---|---:|---:|---:|\n'
for scenario in $scenarios; do
  per_request() {
    local a b
    a=$(count "$scenario" "$1" "$n1"); b=$(count "$scenario" "$1" "$n2")
    echo $(( (b - a) / (n2 - n1) ))
  }
  bare=$(per_request bare); mirrored=$(per_request mirrored)
  printf '| %s | %s | %s | %s |\n' "$scenario" "$bare" "$mirrored" $((mirrored - bare))
done
echo
echo "command: ${SCENARIOS:+SCENARIOS=\"$SCENARIOS\" }bench/instructions.sh $n1 $n2 ($(date -u +%F), $(git rev-parse --short HEAD 2>/dev/null || echo "no git"))"
