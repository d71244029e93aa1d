#!/bin/bash
# test/device/prof.sh SHAPE:TYPE... - where the GPU time of a prefill and of
# a decode step goes, per kernel, measured with Nsight Compute (ncu, clocks
# and caches left alone) on the CUDA backend. Needs build/ (run.sh build).
#   KILN_SHARED=devdata/shared bash test/device/prof.sh mistral-7b:f16
# Each kernel runs alone under ncu (no overlap between launches), so the sum
# is an upper bound of the real step; the split between kernels is what it
# is for. Output: $OUT/prof-SHAPE-TYPE.txt (kernel, calls, total ms, us/call).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-build/device-out}; mkdir -p "$OUT"
export KILN_SHARED=${KILN_SHARED:-devdata/shared}
export KILN_BACKEND_PATH=$PWD/build
summ() { # csv -> table, divided by $2 (runs)
    python3 - "$1" "$2" <<'PY'
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
runs = float(sys.argv[2])
hdr = None; agg = collections.OrderedDict()
for r in rows:
    if 'Kernel Name' in r and 'Metric Value' in r: hdr = r; continue
    if not hdr or len(r) != len(hdr): continue
    d = dict(zip(hdr, r))
    if d.get('Metric Name') != 'gpu__time_duration.sum': continue
    name = d['Kernel Name'].split('(')[0].split('<')[0][:48]
    v = float(d['Metric Value'].replace(',', ''))
    unit = d.get('Metric Unit', 'nsecond')
    us = v / 1000.0 if unit.startswith('n') else (v if unit.startswith('u') else v * 1000.0)
    c, t = agg.get(name, (0, 0.0)); agg[name] = (c + 1, t + us)
tot = sum(t for c, t in agg.values())
print("total %.3f ms per run (%d kernels per run)" % (tot / runs / 1000, sum(c for c, t in agg.values()) / runs))
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print("  %-48s %6.0f calls/run %9.3f ms/run %8.2f us/call" % (n, c / runs, t / runs / 1000, t / c))
PY
}
for spec in "$@"; do
    shape=${spec%%:*}; type=${spec##*:}; f=/tmp/$shape-$type.gguf
    [ -f "$f" ] || build/bin/kiln-gen-model --shape "$shape" --type "$type" \
        --vocab "$KILN_SHARED/vocab/vocab-llama-spm.gguf" -o "$f" -q >/dev/null 2>&1
    [ -f "$f" ] || { echo "no model $spec"; continue; }
    log="$OUT/prof-$shape-$type.txt"
    ncu_run() { ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv "$@"; }
    # pp512: warm-up + 1 run = 2 prefills
    ncu_run build/bin/kiln-bench --backend cuda -m "$f" -p 512 -n 0 -r 1 >/tmp/pp.csv 2>/tmp/pp.err
    { echo "== $spec pp512 (per prefill of 512 tokens)"; summ /tmp/pp.csv 2; } | tee "$log"
    # decode: warm-up + 1 run of 4 steps = 8 steps
    ncu_run build/bin/kiln-bench --backend cuda -m "$f" -p 0 -n 4 -r 1 >/tmp/tg.csv 2>/tmp/tg.err
    { echo "== $spec decode (per step)"; summ /tmp/tg.csv 8; } | tee -a "$log"
    tail -n 3 /tmp/pp.err /tmp/tg.err
    [ -n "${KILN_PROF_KEEP:-}" ] || rm -f "$f"
done
