#!/usr/bin/env python3
"""bench/ktrace.py TRACE - a decode step's kernels from bench/ktrace.c's
timeline: per kernel (in step order, averaged over the steps) its duration
and its *delta*, the time from the latest end among the kernels before it to
its own end: what it adds to the step. With programmatic dependent launch a
kernel starts before its predecessor ends, so durations overlap and only
deltas add up (to the step's span). Steps are the graph replays: runs of
graph kernels separated by a gap of over 20 us (the host's time between
steps); the first two are left out (warm-up)."""
import collections
import re
import sys


def short(name):
    m = re.match(r'_Z\d+([A-Za-z_0-9]+?)I', name) or re.match(r'_Z\d+([A-Za-z_0-9]+)', name)
    return (m.group(1) if m else name)[:36]


def main(path, shown=24):
    recs = []
    for line in open(path):
        p = line.split(' ', 3)
        if len(p) == 4 and p[2] != '0':
            recs.append((int(p[0]), int(p[1]), p[3].strip()))
    recs.sort()
    steps, cur = [], []
    for r in recs:
        if cur and r[0] - max(x[1] for x in cur[-8:]) > 20000:
            steps.append(cur)
            cur = []
        cur.append(r)
    if cur:
        steps.append(cur)
    if not steps:
        print("no graph kernels in", path)
        return
    n = collections.Counter(len(s) for s in steps).most_common(1)[0][0]
    steps = [s for s in steps if len(s) == n][2:] or [s for s in steps if len(s) == n]
    span = sum(s[-1][1] - s[0][0] for s in steps) / len(steps) / 1e3
    print("%d steps of %d kernels, %.1f us from the first start to the last end" % (len(steps), n, span))
    dur = [sum(s[i][1] - s[i][0] for s in steps) / len(steps) / 1e3 for i in range(n)]
    delta = [sum(s[i][1] - (max(x[1] for x in s[:i]) if i else s[i][0]) for s in steps) / len(steps) / 1e3
             for i in range(n)]
    per = collections.OrderedDict()
    for i in range(n):
        a = per.setdefault(short(steps[0][i][2]), [0, 0.0, 0.0])
        a[0] += 1
        a[1] += dur[i]
        a[2] += delta[i]
    print("%-36s %6s %10s %10s %12s" % ("kernel", "calls", "dur us", "delta us", "delta/step"))
    for k, a in sorted(per.items(), key=lambda x: -x[1][2]):
        print("%-36s %6d %10.2f %10.2f %12.1f" % (k, a[0], a[1] / a[0], a[2] / a[0], a[2]))
    print("the step's first %d kernels (start and end from the step's first start, us):" % min(shown, n))
    t0 = [s[0][0] for s in steps]
    for i in range(min(shown, n)):
        st = sum(s[i][0] - t for s, t in zip(steps, t0)) / len(steps) / 1e3
        en = sum(s[i][1] - t for s, t in zip(steps, t0)) / len(steps) / 1e3
        print("  %3d %-36s start %8.2f end %8.2f dur %6.2f delta %6.2f" % (i, short(steps[0][i][2]), st, en, dur[i],
                                                                         delta[i]))


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 24)
