#!/usr/bin/env bash
# The fuzz targets of xenplug (README.md): build, run, minimise.
#
#   fuzz/run.sh build                 build every target (libFuzzer, coverage instrumented)
#   fuzz/run.sh smoke [SECONDS]       every target from its corpus for SECONDS (default 5)
#                                     each; fails on any crash (what ./test.sh runs)
#   fuzz/run.sh run TARGET RUNS       fuzz TARGET for RUNS executions (nice 10), new inputs in a
#                                     scratch directory, then merge (minimise) into the corpus;
#                                     prints execs, corpus size and coverage; log in
#                                     fuzz/target/logs/TARGET.log
#   fuzz/run.sh all RUNS [SECONDS [TARGET…]]
#                                     `run` for every target (or those named), one at a time,
#                                     each stopped after RUNS executions or SECONDS (if given);
#                                     summaries in fuzz/target/logs/summary.txt
#   fuzz/run.sh cmin TARGET           minimise TARGET's corpus in place
#   fuzz/run.sh list                  the targets
#
# Engine: libFuzzer through libfuzzer-sys on the stable toolchain. Coverage instrumentation is
# stable rustc codegen options (-Cpasses=sancov-module and LLVM's sanitizer-coverage flags); no
# sanitizer: the code under test has no `unsafe`, and bounds on memory are asserted by the
# targets themselves (a counting allocator), since libFuzzer's -malloc_limit_mb needs a
# sanitizer's malloc hooks. Targets run with a 512 KiB stack so unbounded recursion shows.
set -euo pipefail
cd "$(dirname "$0")"

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$PWD/target"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
TARGETS=$(grep -A1 '^\[\[bin\]\]' Cargo.toml | sed -n 's/^name = "\(.*\)"$/\1/p')

build() {
    # --target keeps the flags off build scripts and proc macros (they do not link libFuzzer).
    RUSTFLAGS="-Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        nice -n 10 cargo build --release --locked --target "$TRIPLE" --bins "$@"
}

# Options shared by every run: a per-input time limit (a hang is a finding), RSS limit, input
# length (text parsers get longer inputs), and the dictionary if the target has one.
opts() {
    local t=$1
    local o=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    case $t in
        xs_wire_server | xs_wire_client | qga_frame | qga_command | config_json | nocloud_yaml | xl_config | hotplug_config | peer_policy)
            o+=(-max_len=16384) ;;
        *) o+=(-max_len=4096) ;;
    esac
    [ -f "dict/$t.dict" ] && o+=("-dict=dict/$t.dict")
    printf '%s\n' "${o[@]}"
}

run_one() {
    local t=$1 runs=$2 secs=${3:-0} log
    mkdir -p "corpus/$t" "$CARGO_TARGET_DIR/logs"
    log="$CARGO_TARGET_DIR/logs/$t.log"
    local scratch
    scratch=$(mktemp -d "/tmp/xenplug-fuzz-$t.XXXXXX")
    trap 'rm -rf "$scratch"' RETURN
    mapfile -t o < <(opts "$t")
    (
        ulimit -s 512
        mkdir -p artifacts
        nice -n 10 "$BIN/$t" "${o[@]}" -runs="$runs" -max_total_time="$secs" \
            -artifact_prefix="artifacts/$t-" \
            "$scratch" "corpus/$t"
    ) >"$log" 2>&1 || { tail -40 "$log"; echo "run.sh: $t FAILED (log: $log)" >&2; return 1; }
    merge "$t" "$scratch"
    summary "$t" "$log"
}

# Merge new inputs into the corpus, keeping only those that add coverage (libFuzzer -merge=1
# on an empty directory = cmin).
merge() {
    local t=$1 extra=${2:-} fresh
    fresh=$(mktemp -d "/tmp/xenplug-fuzz-cmin-$t.XXXXXX")
    mapfile -t o < <(opts "$t")
    (ulimit -s 512; "$BIN/$t" "${o[@]}" -merge=1 "$fresh" "corpus/$t" ${extra:+"$extra"}) \
        >"$CARGO_TARGET_DIR/logs/$t.merge.log" 2>&1
    rm -rf "corpus/$t"
    mv "$fresh" "corpus/$t"
    chmod 755 "corpus/$t"
}

summary() {
    local t=$1 log=$2
    local execs cov ft files bytes
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    files=$(find "corpus/$t" -type f | wc -l)
    bytes=$(du -sb "corpus/$t" | cut -f1)
    total=$(grep -o 'Loaded 1 modules *([0-9]* inline 8-bit counters)' "$log" | grep -o '[0-9]* inline' | cut -d' ' -f1 | head -1)
    printf '%-16s execs %-10s corpus %4s files %8s bytes  cov %6s of %s edges  ft %s\n' \
        "$t" "$execs" "$files" "$bytes" "$cov" "$total" "$ft"
}

# smoke_one TARGET SECONDS: every committed input of TARGET, then SECONDS of fuzzing from them.
smoke_one() {
    local t=$1 secs=$2 o scratch log=/tmp/xenplug-fuzz-smoke-$1.log
    mapfile -t o < <(opts "$t")
    # Every committed input is re-run first; new inputs go to a scratch directory (libFuzzer
    # writes to the first one), never into the repository.
    scratch=$(mktemp -d "/tmp/xenplug-fuzz-smoke-$t.XXXXXX")
    if (ulimit -s 512; nice -n 10 "$BIN/$t" "${o[@]}" -max_total_time="$secs" \
        -artifact_prefix="/tmp/xenplug-fuzz-smoke-$t-" "$scratch" "corpus/$t") >"$log" 2>&1; then
        printf 'fuzz smoke %-16s ok (%s execs)\n' "$t" \
            "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
        rm -f "$log"
        rm -rf "$scratch"
    else
        tail -30 "$log"
        echo "fuzz smoke $t FAILED (log $log)" >&2
        rm -rf "$scratch"
        return 1
    fi
}

smoke() {
    local secs=${1:-5} t fails=0 running=0 jobs
    build
    # libFuzzer runs one thread: one target per CPU at a time.
    jobs=$(nproc)
    for t in $TARGETS; do
        if [ "$running" -ge "$jobs" ]; then
            wait -n || fails=$((fails + 1))
            running=$((running - 1))
        fi
        smoke_one "$t" "$secs" &
        running=$((running + 1))
    done
    while [ "$running" -gt 0 ]; do
        wait -n || fails=$((fails + 1))
        running=$((running - 1))
    done
    [ "$fails" = 0 ]
}

case ${1:-} in
    build) shift; build "$@" ;;
    smoke) smoke "${2:-5}" ;;
    run) run_one "$2" "$3" ;;
    all)
        runs=$2 secs=${3:-0}
        shift $(($# < 3 ? $# : 3))
        mkdir -p "$CARGO_TARGET_DIR/logs"
        for t in ${*:-$TARGETS}; do
            run_one "$t" "$runs" "$secs" | tee -a "$CARGO_TARGET_DIR/logs/summary.txt" || true
        done
        ;;
    cmin) merge "$2" ;;
    list) echo "$TARGETS" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
