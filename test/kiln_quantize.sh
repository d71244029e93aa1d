#!/bin/bash
# test/kiln_quantize.sh - the kiln-quantize example's command line (the
# library call itself is tested by test_quantize.c). Run by make check from
# the repository root; KILN_BUILD names the build.
#   usage      no arguments or an unknown type: usage on stderr, exit 2
#   bad_input  a missing input: "kiln-quantize: ...: FILE..." on stderr,
#              exit 1, no output file
#   convert    the bundled q4_k_m model with --allow-requantize to q8_0:
#              exit 0, progress lines, a file kiln-info reads as q8_0
#   requant    the same without --allow-requantize: exit 1, no file
set -u
cd "$(dirname "$0")/.."
bin=${KILN_BUILD:-build}/bin/kiln-quantize
info=${KILN_BUILD:-build}/bin/kiln-info
pass=0; fail=0; skip=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
finish() { echo "kt: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
if [ ! -x "$bin" ]; then bad build "$bin is missing"; finish; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=models/tiny-target-q4_k_m.gguf

"$bin" > "$tmp/out" 2> "$tmp/err"; rc1=$?
"$bin" "$model" "$tmp/x.gguf" q9_9 2> "$tmp/err2"; rc2=$?
if [ "$rc1" -eq 2 ] && grep -q '^usage: kiln-quantize' "$tmp/err" && [ "$rc2" -eq 2 ] &&
   grep -q "unknown type 'q9_9'" "$tmp/err2" && [ ! -e "$tmp/x.gguf" ]; then
    ok usage; else bad usage "rc=$rc1/$rc2"; fi

"$bin" "$tmp/none.gguf" "$tmp/x.gguf" q8_0 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 1 ] && grep -q "^kiln-quantize: .*none.gguf" "$tmp/err" && [ ! -e "$tmp/x.gguf" ]; then
    ok bad_input; else bad bad_input "rc=$rc $(cat "$tmp/err")"; fi

"$bin" -t 2 --allow-requantize "$model" "$tmp/q8.gguf" Q8_0 2> "$tmp/err"; rc=$?
"$info" "$tmp/q8.gguf" > "$tmp/info" 2>&1
if [ "$rc" -eq 0 ] && grep -q 'output.weight *q8_0' "$tmp/err" &&
   grep -q 'general.file_type *u32 *= 7' "$tmp/info" && grep -Eq '^ +q8_0 +[0-9]+ tensors' "$tmp/info"; then
    ok convert; else bad convert "rc=$rc $(tail -3 "$tmp/err")"; fi

"$bin" -q "$model" "$tmp/r.gguf" q4_0 2> "$tmp/err"; rc=$?
if [ "$rc" -eq 1 ] && grep -q "already q4_K" "$tmp/err" && [ ! -e "$tmp/r.gguf" ] &&
   [ -z "$(ls "$tmp" | grep tmp-)" ]; then
    ok requant; else bad requant "rc=$rc $(cat "$tmp/err")"; fi
finish
