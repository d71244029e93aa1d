#!/bin/bash
# test/server.sh - kiln-server end to end on loopback (run by make check from
# the repository root; KILN_BUILD names the build). The cases are in
# test/server_client.py (Python standard library only); skipped when
# kiln-server was not built (libmicrohttpd/cJSON missing) or python3 is
# absent. Uses the bundled model; the draft and multi-model case also needs
# ../shared (or $KILN_SHARED).
set -u
cd "$(dirname "$0")/.."
build=${KILN_BUILD:-build}
if [ ! -x "$build/bin/kiln-server" ]; then
    echo "skip: $build/bin/kiln-server was not built (libmicrohttpd-dev and libcjson-dev missing)"; exit 77
fi
if ! command -v python3 >/dev/null 2>&1; then echo "skip: python3 not found"; exit 77; fi
shared=${KILN_SHARED:-../shared}
exec python3 test/server_client.py "$build/bin" models/tiny-target-q4_k_m.gguf "$shared/models"
