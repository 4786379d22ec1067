# ruff: noqa
"""Summarise the stamps store_sitecustomize.py wrote: python store_stamps.py /tmp/s19/stamp"""
import collections, glob, json, os, sys


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q / 100 * len(v)))] if v else None


for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    for k, v in d.items():
        if not v:
            continue
        xs = [x for _, x in v]
        if k == "group":
            print(f, k, len(xs), "groups, operations", sum(xs), "p50", pct(xs, 50), "max", max(xs))
            continue
        print(f, k, len(xs), "p50=%.2fms p90=%.2fms p99=%.2fms max=%.1fms sum=%.2fs"
              % (pct(xs, 50) * 1e3, pct(xs, 90) * 1e3, pct(xs, 99) * 1e3, max(xs) * 1e3, sum(xs)))
    if len(d.get("store_resume", [])) > 1000 and d.get("txn"):
        t0 = min(t for t, _ in d["txn"])
        for key in ("begin", "txn", "store_resume", "group"):
            b = collections.defaultdict(list)
            for t, x in d[key]:
                b[int(t - t0)].append(x)
            unit = 1 if key == "group" else 1000
            print(" ", key, "per second (sum/count):",
                  " ".join(f"{s}:{sum(b[s]) * unit:.0f}/{len(b[s])}" for s in sorted(b)))
