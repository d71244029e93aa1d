#!/bin/bash
# test/kiln_spec.sh - the kiln-spec example: exit codes, and its greedy text
# equals kiln-run's on the target alone (run by make check from the
# repository root; KILN_BUILD names the build).
#   usage      no draft model: usage on stderr, exit 2
#   bad_file   a missing model: "kiln-spec: FILE: ..." on stderr, exit 1
#   greedy     tiny-target-f16 with tiny-draft-f16 (skipped without
#              ../shared): the same text as kiln-run --temp 0, and the
#              acceptance statistics on stderr
set -u
cd "$(dirname "$0")/.."
build=${KILN_BUILD:-build}
bin=$build/bin/kiln-spec
pass=0; fail=0; skip=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
finish() { echo "kt: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
if [ ! -x "$bin" ]; then bad build "$bin is missing"; finish; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" -m x.gguf -p x > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 2 ] && grep -q '^usage: kiln-spec -m TARGET -d DRAFT' "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok usage; else bad usage "rc=$rc"; fi

"$bin" -m "$tmp/none.gguf" -d "$tmp/none.gguf" -p x > "$tmp/out" 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 1 ] && grep -q "^kiln-spec: $tmp/none.gguf: " "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok bad_file; else bad bad_file "rc=$rc: $(cat "$tmp/err")"; fi

shared=${KILN_SHARED:-../shared}
target=$shared/models/tiny-target-f16.gguf
draft=$shared/models/tiny-draft-f16.gguf
if [ -f "$target" ] && [ -f "$draft" ] && [ -x "$build/bin/kiln-run" ]; then
    "$bin" -m "$target" -d "$draft" -p "In the beginning" -n 40 -t 2 > "$tmp/spec" 2> "$tmp/err"; rc=$?
    "$build/bin/kiln-run" -m "$target" -p "In the beginning" -n 40 --temp 0 -t 2 > "$tmp/run" 2> /dev/null
    if [ "$rc" -eq 0 ] && cmp -s "$tmp/spec" "$tmp/run" && grep -q "draft tokens accepted" "$tmp/err"; then
        ok greedy; else bad greedy "rc=$rc: '$(cat "$tmp/spec")' vs '$(cat "$tmp/run")' $(cat "$tmp/err")"; fi
else
    echo "skip greedy: ../shared or kiln-run not found"; skip=$((skip + 1))
fi
finish
