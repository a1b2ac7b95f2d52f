#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after the other (one libFuzzer process at a
# time: CI-class machines have 2 cores), and prints executions, coverage and crashes.
#
#   fuzz/run.sh 600                  # every target, 10 minutes each
#   fuzz/run.sh 60 election handshake  # some targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). This machine has stable Rust only, so
# RUSTC_BOOTSTRAP=1 unlocks the nightly flags libFuzzer's sanitizer build needs.
# Seeds are read from fuzz/corpus/<target> (committed, never written); what the fuzzer
# finds goes to fuzz/target/corpus-work/<target>, crashes to fuzz/artifacts/<target>.
# Logs: fuzz/target/logs/<target>.log. Exit status: 1 if any target crashed.
set -euo pipefail

cd "$(dirname "$0")"
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(frame_decode handshake config_parse election driver_protocol datagram)
fi
export RUSTC_BOOTSTRAP=1

mkdir -p target/logs
# One build for every target, before the clock starts.
cargo fuzz build >&2

rows=()
failed=0
for t in "${targets[@]}"; do
    work="target/corpus-work/$t"
    log="target/logs/$t.log"
    mkdir -p "$work" "artifacts/$t"
    echo "== $t: ${seconds}s (log: fuzz/$log)" >&2
    status=0
    cargo fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=2560 \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    if [[ -z $execs ]]; then # no final stats: take the last status line
        execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")
    fi
    crashes=$(grep -cE '^(==[0-9]+== ?ERROR|thread .* panicked|SUMMARY: libFuzzer)' "$log" || true)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [[ $status -ne 0 ]]; then
        failed=1
        crashes=$(( crashes > 0 ? crashes : 1 ))
    fi
    rows+=("$(printf '%-16s %12s %9s %7s %8s %7s %7s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "${artifact:-}")")
done

printf '\n%-16s %12s %9s %7s %8s %7s %7s  %s\n' target execs "execs/s" cov ft corpus crashes artifact
for row in "${rows[@]}"; do
    echo "$row"
done
exit $failed
