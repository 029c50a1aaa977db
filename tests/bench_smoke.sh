#!/bin/sh
# bench_smoke.sh - every `fathom bench` subcommand on a tiny shape: it runs to the end
# (under `make check`, with the sanitizers), prints one JSON object with the fields
# docs/bench.md promises, and the protocol's options reach it (--burst, mla's --sets
# and --cache-dtype, --direct). Bad options are refused with a message naming them.
# Figures are not judged here (docs/bench.md: never timed asserts in tests).
# Build folder: $FATHOM_BUILD (default build). Last line: "N passed, N failed".

root=$(cd "$(dirname "$0")/.." && pwd -P) || exit 1
cd "$root" || exit 1
B=${FATHOM_BUILD:-build}
F="$B/fathom"
pass=0
failed=0
ok() { pass=$((pass + 1)); }
bad() {
    echo "bench_smoke: FAIL: $*"
    failed=$((failed + 1))
}

# small probes and few runs: the smoke test times nothing
common="--runs 5 --warmup 1 --bw-mib 64 --threads 2 --json"

# $1: name; $2: fields that must appear; the rest: the bench command line.
# gemm, experts and layer load OpenBLAS and BLIS: LeakSanitizer's stop-the-world
# tracer crashes on their threads at exit (in a sanitized build), so leak checking is
# off for those runs only (the sanitizers' other checks stay on; mla and route, which
# load no BLAS, keep it).
run() {
    name=$1
    fields=$2
    shift 2
    lsan=""
    case "$1" in gemm | experts | layer) lsan="detect_leaks=0" ;; esac
    out=$(LSAN_OPTIONS="${lsan:-${LSAN_OPTIONS:-}}" "$F" bench "$@" $common 2>/tmp/bench_smoke.$$)
    rc=$?
    if [ $rc -ne 0 ]; then
        bad "$name: exit status $rc: $(tail -n 3 /tmp/bench_smoke.$$)"
        return
    fi
    miss=""
    for f in ours peer peer_name ratio unit fma_probe_gflops bw_probe_gbs runs burst \
        flop_per_call bytes_per_call flop_per_byte ours_gflops $fields; do
        printf '%s\n' "$out" | grep -q "\"$f\": " || miss="$miss $f"
    done
    if [ -n "$miss" ]; then
        bad "$name: JSON lacks$miss: $out"
        return
    fi
    ok
}

run "gemm f32" "fraction_of_fma_probe" gemm --m 16 --n 64 --k 128
run "gemm bf16" "" gemm --m 16 --n 64 --k 128 --dtype bf16 --burst 2
run "experts prefill" "" experts --experts 8 --active 2 --tokens 16 --hidden 128 --inter 64
run "experts decode" "" experts --experts 8 --active 2 --tokens 1 --hidden 128 --inter 64
run "route" "ids_differing" route --experts 16 --active 4 --groups 4 --topk-groups 2 --hidden 128
run "layer" "weight_gbs fraction_of_bw_probe bw_probe_interleaved" layer --experts 8 --active 2 --hidden 128 --inter 64 --burst 4
run "mla f32 cache" "fraction_of_bf16_probe max_rel_diff_vs_peer bf16_probe_interleaved" \
    mla --ctx 300 --heads 4 --kv-lora 64 --rope 16 --nope 32 --v 32
run "mla bf16 cache, sets" "fraction_of_bf16_probe ours_cached_gflops sets" \
    mla --ctx 300 --heads 4 --kv-lora 64 --rope 16 --nope 32 --v 32 --cache-dtype bf16 --sets 3 --burst 5
run "mla fp8 kv_b" "fraction_of_bf16_probe" mla --ctx 300 --heads 2 --kv-lora 128 --rope 16 --nope 128 --v 128 --dtype fp8
run "mla 128 rows, direct" "fraction_of_bf16_probe" \
    mla --ctx 300 --heads 32 --tokens 4 --kv-lora 64 --rope 16 --nope 32 --v 32 --cache-dtype bf16 --direct

# mla times both probes among its contenders: the JSON says so
out=$("$F" bench mla --ctx 64 --heads 2 --kv-lora 32 --rope 8 --nope 16 --v 16 $common 2>/dev/null)
for f in bw_probe_interleaved bf16_probe_interleaved; do
    if printf '%s\n' "$out" | grep -q "\"$f\": true"; then ok; else bad "mla: $f is not true: $out"; fi
done

# the header names the burst
out=$("$F" bench mla --ctx 64 --heads 2 --kv-lora 32 --rope 8 --nope 16 --v 16 --runs 5 --bw-mib 64 --burst 4 2>/dev/null)
if printf '%s\n' "$out" | grep -q "a run = 4 calls back to back"; then ok; else bad "mla text header lacks the burst: $out"; fi

# tools/roofline on tiny shapes: a row per op with its intensity and GFLOP/s, and the
# plot (the BLAS peers' threads: leak checking off, as above)
rl=$(mktemp -d)
if ! LSAN_OPTIONS=detect_leaks=0 FATHOM_BUILD="$B" tools/roofline --quick -o "$rl" >"$rl/log" 2>&1; then
    bad "roofline: failed: $(tail -n 3 "$rl/log")"
elif [ "$(awk 'match($0, /^"[^"]*" /) { split(substr($0, RLENGTH + 1), v, " "); if (v[1] > 0 && v[2] > 0) n++ } END { print n + 0 }' "$rl/roofline.dat")" -lt 4 ]; then
    bad "roofline: roofline.dat lacks rows with a positive intensity and GFLOP/s: $(cat "$rl/roofline.dat")"
elif command -v gnuplot >/dev/null 2>&1 && ! grep -q "GEMM f32" "$rl/roofline.svg"; then
    bad "roofline: roofline.svg lacks the GEMM f32 point"
else
    ok
fi
rm -rf "$rl"

# bad options: refused, status 2, the option named
refused() {
    name=$1
    want=$2
    shift 2
    err=$(LSAN_OPTIONS=detect_leaks=0 "$F" bench "$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -ne 2 ]; then
        bad "$name: exit status $rc, expected 2"
    elif ! printf '%s\n' "$err" | grep -q -- "$want"; then
        bad "$name: the message does not name $want: $err"
    else
        ok
    fi
}
refused "cache dtype" "--cache-dtype" mla --cache-dtype f16
refused "burst range" "--burst" gemm --burst 65
refused "fp8 kv_b blocks" "--nope" mla --dtype fp8 --nope 64
refused "unknown option" "--frobnicate" gemm --frobnicate

rm -f /tmp/bench_smoke.$$
[ $failed -eq 0 ] && echo "bench_smoke: ok: every subcommand ran with its JSON fields"
echo "$pass passed, $failed failed"
[ $failed -eq 0 ]
