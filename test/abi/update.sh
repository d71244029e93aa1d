#!/bin/bash
# test/abi/update.sh - regenerates the committed ABI baseline after a
# DELIBERATE change of the public API (usually: new functions added).
# Run from anywhere; commit the result together with the API change:
#
#   test/abi/kiln.symbols     exported kiln_* names (sorted, LC_ALL=C)
#   test/abi/libkiln.abi      abidw's description of the exported ABI
#   test/abi/kiln-X.Y.Z.h     the public header as of version X.Y.Z (the
#                             current one); older snapshots are never touched
#
# On a merge conflict in these files: take either side, then re-run this
# script on the merged tree (they are generated, never edited by hand).
#
# Removing or changing an exported function or a public struct is not an
# update: it breaks callers (see docs/ARCHITECTURE.md, "ABI rules").
#
# Uses the plain (not sanitized) build with debug info: KILN_BUILD (default
# build) is rebuilt with `make lib` when run outside make.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${KILN_BUILD:-build}
make_cmd=${MAKE:-make}
case "$build" in
    */san) echo "update.sh: use the plain build, not $build" >&2; exit 1 ;;
esac
if [ -z "${KILN_VERSION:-}" ]; then
    "$make_cmd" -s -j2 lib
    KILN_VERSION=$(sed -n 's/^#define KILN_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' \
                   include/kiln.h | paste -sd. -)
fi
lib="$build/libkiln.so.$KILN_VERSION"
[ -f "$lib" ] || { echo "update.sh: $lib not built" >&2; exit 1; }
if ! readelf -S "$lib" | grep -q '\.debug_info'; then
    echo "update.sh: $lib has no debug info (build with CFLAGS containing -g)" >&2
    exit 1
fi

nm -D --defined-only "$lib" | awk '$3 ~ /^kiln_/ { sub(/@.*/, "", $3); print $3 }' \
    | LC_ALL=C sort > test/abi/kiln.symbols
abidw --no-corpus-path --no-comp-dir-path --no-show-locs --headers-dir include --out-file test/abi/libkiln.abi "$lib"
cp include/kiln.h "test/abi/kiln-$KILN_VERSION.h"
echo "update.sh: $(wc -l < test/abi/kiln.symbols) symbols; wrote test/abi/kiln.symbols," \
     "test/abi/libkiln.abi, test/abi/kiln-$KILN_VERSION.h"
