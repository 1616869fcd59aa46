#!/usr/bin/env python3
"""Plots the bench results as SVG and prints them as Markdown tables. Python stdlib only.

The benches append one JSON line per measured value to
`$CARGO_TARGET_DIR/threadhost-bench/results.jsonl` (default `target/`). This script takes, for
each (workload, peer, param, metric), the median of the values recorded since `--since` (a Unix
time; default: only the latest value), from full runs unless `--short` is given, and writes:

- `benches/results.svg`: deliveries per second and emit-to-receive latency (p50, p99) against
  the number of subscribers (fan-out) and of threads (many-threads), one line per peer;
- on stdout, Markdown tables with the ratios of threadhost to both peers.

Usage: python3 benches/plot.py [--results PATH] [--svg PATH] [--short] [--since UNIX]
                              [--allocator system|mimalloc]
"""

import argparse
import json
import math
import os
import sys

PEERS = ["raw-actix", "mutex-map", "threadhost"]
COLORS = {"raw-actix": "#7f7f7f", "mutex-map": "#d62728", "threadhost": "#1f77b4"}


def load(path, short, since, allocator="system"):
    """{key: record with "value" = median and "values" = every value, in run order}.

    Only records of one allocator (records without the field were made with the system's)."""
    runs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if bool(r.get("short")) != short:
                continue
            if r.get("allocator", "system") != allocator:
                continue
            key = (r["workload"], r["peer"], r["param"], r["metric"])
            runs.setdefault(key, []).append(r)
    data = {}
    for key, rs in runs.items():
        if since is not None:
            rs = [r for r in rs if r.get("unix", 0) >= since] or rs[-1:]
        else:
            rs = rs[-1:]
        values = [r["value"] for r in rs]
        ordered = sorted(values)
        median = ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1]) / 2
        rec = dict(rs[-1])
        rec["value"] = median
        rec["values"] = values
        rec["loads"] = [r.get("load") for r in rs]
        data[key] = rec
    return data


def value(data, workload, peer, param, metric):
    r = data.get((workload, peer, param, metric))
    return None if r is None else r["value"]


def params_of(data, workload):
    return sorted({k[2] for k in data if k[0] == workload})


# ---- SVG -------------------------------------------------------------------------------------


def nice_log_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10**e <= hi * 1.0001:
        if 10**e >= lo / 1.0001:
            ticks.append(10**e)
        e += 1
    return ticks


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def panel(x0, y0, w, h, title, xlabel, ylabel, series):
    """series: list of (label, color, dash, [(x, y), ...]); log-log axes."""
    out = []
    pts = [p for _, _, _, s in series for p in s if p[1] is not None and p[1] > 0]
    if not pts:
        return out
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
    ylo = 10 ** math.floor(math.log10(min(ys)))
    yhi = 10 ** math.ceil(math.log10(max(ys)))
    if yhi <= ylo:
        yhi = ylo * 10

    def sx(x):
        return x0 + (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * w

    def sy(y):
        return y0 + h - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * h

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 36}" text-anchor="middle">{xlabel}</text>')
    out.append(
        f'<text x="{x0 - 52}" y="{y0 + h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 - 52} {y0 + h / 2})">{ylabel}</text>'
    )
    for t in nice_log_ticks(ylo, yhi):
        y = sy(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{fmt(t)}</text>')
    for t in sorted(set(xs)):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle" font-size="11">{fmt(t)}</text>')
    ly = y0 + 14
    for label, color, dash, s in series:
        s = [(x, y) for x, y in s if y is not None and y > 0]
        if not s:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(s))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash_attr}/>')
        for x, y in s:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        out.append(
            f'<line x1="{x0 + 8}" y1="{ly - 4}" x2="{x0 + 28}" y2="{ly - 4}" stroke="{color}" '
            f'stroke-width="2"{dash_attr}/>'
        )
        out.append(f'<text x="{x0 + 32}" y="{ly}" font-size="11">{label}</text>')
        ly += 14
    return out


def svg(data, path):
    w, h = 360, 230
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="900" height="640" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for col, (workload, xlabel) in enumerate(
        [("fan-out", "subscribers of one thread"), ("many-threads", "threads (one subscriber each)")]
    ):
        x0 = 90 + col * 450
        params = params_of(data, workload)
        rate = [
            (peer, COLORS[peer], None, [(p, value(data, workload, peer, p, "deliveries_per_s")) for p in params])
            for peer in PEERS
        ]
        parts += panel(x0, 40, w, h, f"{workload}: deliveries/s", xlabel, "deliveries per second", rate)
        lat = []
        for peer in PEERS:
            for metric, dash in [("latency_p50", None), ("latency_p99", "5,4")]:
                pts = [(p, value(data, workload, peer, p, metric)) for p in params]
                lat.append((f"{peer} {metric[8:]}", COLORS[peer], dash, pts))
        parts += panel(x0, 360, w, h, f"{workload}: emit-to-receive latency", xlabel, "microseconds", lat)
    parts.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


# ---- tables ----------------------------------------------------------------------------------


def ratio(a, b):
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def ratio_range(data, workload, p, peer):
    """min-max over runs of threadhost / peer, pairing the runs in order."""
    t = data.get((workload, "threadhost", p, "deliveries_per_s"))
    o = data.get((workload, peer, p, "deliveries_per_s"))
    if t is None or o is None or len(t["values"]) < 2 or len(t["values"]) != len(o["values"]):
        return ""
    rs = [a / b for a, b in zip(t["values"], o["values"]) if b]
    return f" ({min(rs):.2f}-{max(rs):.2f})"


def num(v, digits=0):
    return "" if v is None else f"{v:,.{digits}f}"


def tables(data):
    lines = []
    for workload, unit in [("fan-out", "subscribers"), ("many-threads", "threads")]:
        lines.append(f"\n{workload} (deliveries/s; latency p50/p99 in us)\n")
        lines.append(
            f"| {unit} | raw-actix | mutex-map | threadhost | vs mutex-map | vs raw-actix | latency threadhost | latency mutex-map |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in params_of(data, workload):
            r, m, t = (value(data, workload, peer, p, "deliveries_per_s") for peer in PEERS)
            lt = (value(data, workload, "threadhost", p, "latency_p50"), value(data, workload, "threadhost", p, "latency_p99"))
            lm = (value(data, workload, "mutex-map", p, "latency_p50"), value(data, workload, "mutex-map", p, "latency_p99"))
            lines.append(
                f"| {p:,} | {num(r)} | {num(m)} | {num(t)} | {ratio(t, m)}{ratio_range(data, workload, p, 'mutex-map')} "
                f"| {ratio(t, r)}{ratio_range(data, workload, p, 'raw-actix')} | "
                f"{num(lt[0], 1)} / {num(lt[1], 1)} | {num(lm[0], 1)} / {num(lm[1], 1)} |"
            )
    lines.append("\nother workloads\n")
    lines.append("| workload | param | metric | mutex-map | threadhost | raw-actix | unit |")
    lines.append("|---|---:|---|---:|---:|---:|---|")
    seen = sorted({(k[0], k[2], k[3]) for k in data if k[0] not in ("fan-out", "many-threads")})
    for workload, p, metric in seen:
        vals = [value(data, workload, peer, p, metric) for peer in ["mutex-map", "threadhost", "raw-actix"]]
        unit = next(data[k]["unit"] for k in data if k[0] == workload and k[2] == p and k[3] == metric)
        lines.append(f"| {workload} | {p:,} | {metric} | {num(vals[0], 2)} | {num(vals[1], 2)} | {num(vals[2], 2)} | {unit} |")
    runs = max(len(r["values"]) for r in data.values())
    lines.append(f"\nmedians of up to {runs} runs; ratio ranges over the runs in parentheses")
    loads = sorted(x for r in data.values() for x in r["loads"] if x is not None and x == x)
    if loads:
        lines.append(f"\nload average (1 min) while measuring: {loads[0]:.2f} to {loads[-1]:.2f}")
    return "\n".join(lines)


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(target, "threadhost-bench", "results.jsonl"))
    ap.add_argument("--svg", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.svg"))
    ap.add_argument("--short", action="store_true", help="use the short-mode (smoke) results")
    ap.add_argument("--since", type=int, help="median of every value recorded since this Unix time")
    ap.add_argument("--allocator", default="system", choices=["system", "mimalloc"],
                    help="results of benches built with this allocator (mimalloc: --features bench-mimalloc)")
    args = ap.parse_args()
    if not os.path.exists(args.results):
        sys.exit(f"no results at {args.results}: run `cargo bench` first (or pass --results)")
    data = load(args.results, args.short, args.since, args.allocator)
    if not data:
        sys.exit(f"no {'short' if args.short else 'full'}-mode results in {args.results}")
    svg(data, args.svg)
    print(tables(data))
    print(f"\nwrote {args.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
