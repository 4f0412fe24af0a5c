#!/bin/sh
# run-fuzz.sh: replays known crashes, then fuzzes for a while.
#
#   tests/run-fuzz.sh FUZZER_BINARY SEED_DIR CRASH_DIR SECONDS
#
# First every file in CRASH_DIR (except README*) is run once through the
# libFuzzer binary: these are regressions and all must pass. Then the fuzzer
# runs for SECONDS over a scratch copy of SEED_DIR (the repository's seeds are
# never written to), with new crashing inputs saved into CRASH_DIR so they are
# kept as regressions. Exits non-zero if any regression fails or the fuzzer
# finds anything.
set -eu

if [ $# -ne 4 ]; then
    echo "usage: $0 FUZZER_BINARY SEED_DIR CRASH_DIR SECONDS" >&2
    exit 2
fi
fuzzer=$1
seeds=$2
crashes=$3
seconds=$4

[ -x "$fuzzer" ] || { echo "run-fuzz: $fuzzer is not an executable" >&2; exit 2; }
[ -d "$seeds" ] || { echo "run-fuzz: seed directory $seeds not found" >&2; exit 2; }
mkdir -p "$crashes"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/exo-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM

# 1. Regressions: each input alone, so one failure does not hide the others.
failed=0
count=0
for f in "$crashes"/*; do
    [ -f "$f" ] || continue
    case $(basename "$f") in README*|.*) continue ;; esac
    count=$((count + 1))
    if ! "$fuzzer" "$f" >"$scratch/replay.log" 2>&1; then
        echo "run-fuzz: regression FAILED: $f" >&2
        tail -n 30 "$scratch/replay.log" >&2
        failed=$((failed + 1))
    fi
done
echo "run-fuzz: $count regression input(s) replayed, $failed failed"
[ "$failed" -eq 0 ] || exit 1

# 2. Fuzz from a scratch copy of the seeds; crashes land in CRASH_DIR.
mkdir "$scratch/corpus"
cp "$seeds"/* "$scratch/corpus/" 2>/dev/null || true
before=$(ls -A "$crashes" | wc -l)
status=0
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$scratch/corpus" || status=$?
after=$(ls -A "$crashes" | wc -l)
if [ "$status" -ne 0 ] || [ "$after" -ne "$before" ]; then
    echo "run-fuzz: the fuzzer found a problem (exit $status); new input(s) saved in $crashes" >&2
    exit 1
fi
echo "run-fuzz: no crashes in ${seconds}s"
