#!/bin/sh
# kiln-run: greedy text from "In the beginning" on tiny-target-f16 is the
# continuation ../shared/README.md gives; a missing file exits 1 with a
# message; bad usage exits 2. Exit 77 = skipped (no ../shared).
BIN=${BUILD:-build}/bin/kiln-run
SHARED=${KILN_SHARED:-../shared}
MODEL=$SHARED/models/tiny-target-f16.gguf
[ -f "$MODEL" ] || { echo "skip: $MODEL not found"; exit 77; }
want="In the beginning of the year, in the day that the king of Egypt had made known to all the people that came out of Egypt,"
got=$("$BIN" -m "$MODEL" -p "In the beginning" -n 26 --temp 0 -t 2 2>/dev/null)
case "$got" in
    "$want"*) echo "ok   greedy continuation";;
    *) echo "FAIL greedy continuation: $got"; exit 1;;
esac
# --memory: the report after loading and after generation, on stderr
mem=$("$BIN" -m "$MODEL" -p "In the beginning" -n 4 --temp 0 -t 2 --memory 2>&1 >/dev/null)
n=$(printf '%s\n' "$mem" | grep -c '^kiln memory report')
if [ "$n" -eq 2 ] && printf '%s\n' "$mem" | grep -q 'device cpu:0' && printf '%s\n' "$mem" | grep -q 'context #'; then
    echo "ok   --memory report"
else
    echo "FAIL --memory report ($n reports)"; printf '%s\n' "$mem"; exit 1
fi
"$BIN" -m /nonexistent.gguf -p x -n 1 2>/tmp/kiln-run-err.$$; rc=$?
[ $rc -eq 1 ] && grep -q nonexistent /tmp/kiln-run-err.$$ || { echo "FAIL missing file: rc $rc"; rm -f /tmp/kiln-run-err.$$; exit 1; }
rm -f /tmp/kiln-run-err.$$
echo "ok   missing file"
"$BIN" --no-such-flag >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || { echo "FAIL bad usage: rc $rc"; exit 1; }
echo "ok   bad usage"
