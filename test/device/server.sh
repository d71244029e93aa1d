#!/bin/bash
# test/device/server.sh - kiln-server on the GPU machine (not run by make
# check): the loopback suite of test/server.sh with every model pinned to
# device 0 of $KILN_BACKEND (default cuda), then device pinning: a model
# given as FILE@cuda:1 must leave nothing on GPU 0 (nvidia-smi), on a
# machine with two GPUs.
#
# Run from the repository root:
#   KILN_SHARED=devdata/shared bash test/device/server.sh
# Needs libmicrohttpd-dev and libcjson-dev (apt-get) for the build.
set -u
cd "$(dirname "$0")/../.."
export KILN_BACKEND=${KILN_BACKEND:-cuda}
export KILN_BACKEND_PATH=$PWD/build
shared=${KILN_SHARED:-../shared}
make -j"$(nproc)" all >/dev/null || { echo "build failed"; exit 1; }
[ -x build/bin/kiln-server ] || { echo "kiln-server not built (libmicrohttpd-dev, libcjson-dev?)"; exit 1; }
rc=0
python3 test/server_client.py build/bin models/tiny-target-q4_k_m.gguf "$shared/models" || rc=1

n_gpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$n_gpu" -ge 2 ]; then
    log=$(mktemp)
    build/bin/kiln-server -m models/tiny-target-q4_k_m.gguf@"$KILN_BACKEND":1 --port 0 2> "$log" &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    port=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$log")
    curl -s "localhost:$port/v1/completions" -d '{"prompt":"In the beginning","max_tokens":8}' >/dev/null
    gpu0=$(nvidia-smi --id=0 --query-compute-apps=pid --format=csv,noheader | grep -c "^$pid$")
    gpu1=$(nvidia-smi --id=1 --query-compute-apps=pid --format=csv,noheader | grep -c "^$pid$")
    kill -TERM "$pid"; wait "$pid"; st=$?
    if [ "$gpu0" -eq 0 ] && [ "$gpu1" -eq 1 ] && [ "$st" -eq 0 ]; then echo "ok   pinning (GPU 1 only)"
    else echo "FAIL pinning: on GPU 0: $gpu0, on GPU 1: $gpu1, exit $st"; cat "$log"; rc=1; fi
    rm -f "$log"
else
    echo "skip pinning: fewer than 2 GPUs"
fi
exit $rc
