#!/bin/bash
# test/run.sh TEST... - runs each test and ends with the totals line
# "N passed, N failed" (", N skipped" when any), read by people and CI.
#
# A test is a program (test/test_*.c built by make) or a shell script
# (test/*.sh, run with bash from the repository root). Either may print the
# harness line "kt: N passed, N failed, N skipped" (test/kt.h), whose counts
# are added up. A test without that line counts as one case: exit 0 passes,
# exit 77 is skipped (the automake convention), anything else fails. A test
# that prints the line but exits non-zero with no failure counted (a crash
# after kt_finish, a sanitizer report at exit) adds one failure.
#
# Each test runs under `timeout` (KILN_TEST_TIMEOUT seconds, default 900) so
# that a hang fails the run instead of stalling CI.
passed=0; failed=0; skipped=0
# The leak guard logs every allocation still tagged to a freed handle (the
# harness fails the test on any: test/kt.c).
export KILN_LEAK_GUARD=${KILN_LEAK_GUARD:-1}
timeout_s=${KILN_TEST_TIMEOUT:-900}
runner=()
if command -v timeout >/dev/null 2>&1; then runner=(timeout "$timeout_s"); fi
failed_names=()

for t in "$@"; do
    echo "== $t"
    case "$t" in
        *.sh) out=$("${runner[@]}" bash "$t" 2>&1); rc=$? ;;
        *)    out=$("${runner[@]}" "$t" 2>&1); rc=$? ;;
    esac
    printf '%s\n' "$out"
    if [ "$rc" -eq 124 ] && [ ${#runner[@]} -gt 0 ]; then
        echo "FAIL $t timed out after $timeout_s s"
    fi
    line=$(printf '%s\n' "$out" | grep -E '^kt: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' | tail -n 1)
    if [ -n "$line" ]; then
        read -r p f s <<EOF
$(printf '%s\n' "$line" | sed -E 's/^kt: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped.*/\1 \2 \3/')
EOF
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
        if [ "$f" -gt 0 ]; then failed_names+=("$t"); fi
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            echo "FAIL $t exited with status $rc"
            failed=$((failed + 1)); failed_names+=("$t")
        fi
    elif [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
    elif [ "$rc" -eq 77 ]; then
        echo "SKIP $t"
        skipped=$((skipped + 1))
    else
        echo "FAIL $t exited with status $rc and no report"
        failed=$((failed + 1)); failed_names+=("$t")
    fi
done
echo
if [ ${#failed_names[@]} -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
fi
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
