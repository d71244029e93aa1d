#!/bin/sh
# Runs each test program given as an argument, prints its output, and ends
# with the totals line "N passed, N failed" (", N skipped" when any).
# A program that crashes or exits non-zero without reporting counts as one
# failure.
passed=0; failed=0; skipped=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep '^kt: ' | tail -n 1)
    if [ -n "$line" ]; then
        p=$(echo "$line" | sed -E 's/^kt: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1/')
        f=$(echo "$line" | sed -E 's/^kt: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\2/')
        s=$(echo "$line" | sed -E 's/^kt: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\3/')
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            echo "FAIL $t exited with status $rc"; failed=$((failed + 1))
        fi
    else
        echo "FAIL $t exited with status $rc and no report"
        failed=$((failed + 1))
    fi
done
echo
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
