# docs/memtrace.gp - plots a kiln-memtrace CSV as a PNG (gnuplot 5, Debian's
# gnuplot-nox): the live host heap and device buffers, and the host heap
# per purpose, against the allocation events (x: event number, so that the
# short phases are as visible as the long ones), with the phases marked.
#
#   build/bin/kiln-memtrace -m MODEL -o trace.csv
#   gnuplot -e "in='trace.csv'; out='trace.png'" docs/memtrace.gp
if (!exists("in")) in = 'memtrace.csv'
if (!exists("out")) out = 'memtrace.png'
set datafile separator ','
set terminal pngcairo size 1000,520 font ',10' noenhanced
set output out
set title 'kiln memory timeline ('.in.')'
set xlabel 'allocation/free events'
set ylabel 'live MiB'
set key outside right top
set grid
set yrange [0:*]
MiB = 1048576.0
# columns: 1 seq, 2 time_ms, 3 phase, 4 sign, 5 space, 6 device, 7 owner,
# 8 purpose, 9 size, 10 bytes_live, 11 host_live, 12 device_live, then
# host_<purpose>: 13 other, 14 weights, 15 kv, 16 kv_host, 17 pool,
# 18 staging, 19 tokenizer, 20 metadata, 21 scratch, 22 device_state,
# 23 sampler, 24 draft
prev = ''
phase_label(c) = (cur = strcol(3), lab = (cur ne prev ? cur : ''), prev = cur, lab)
plot in skip 1 using 1:($12 / MiB) with steps lw 2 lc rgb '#d62728' title 'device buffers', \
     in skip 1 using 1:($11 / MiB) with steps lw 2 lc rgb '#000000' title 'host heap', \
     in skip 1 using 1:($15 / MiB) with steps lw 1.5 lc rgb '#1f77b4' title 'host: kv', \
     in skip 1 using 1:($16 / MiB) with steps lw 1.5 lc rgb '#2ca02c' title 'host: kv_host', \
     in skip 1 using 1:($17 / MiB) with steps lw 1.5 lc rgb '#ff7f0e' title 'host: pool', \
     in skip 1 using 1:($19 / MiB) with steps lw 1.5 lc rgb '#9467bd' title 'host: tokenizer', \
     in skip 1 using 1:($21 / MiB) with steps lw 1.5 lc rgb '#8c564b' title 'host: scratch', \
     in skip 1 using 1:(0.3):(phase_label(0)) with labels rotate by 90 left font ',9' notitle
