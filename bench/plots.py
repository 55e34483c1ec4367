#!/usr/bin/env python3
"""Plots of the harness's JSON results, as SVG (matplotlib, Agg backend):

  rates.svg     stored rate against asked rate per system (medians over the repeats), the
                same-run broker ceiling and the line "stored = asked" drawn in; overload runs too
  latency.svg   publish-to-queryable (every system) and publish-to-webhook (hyfleet) p50 / p99
                by asked rate
  burst.svg     the burst comparison: readings/s, consumer CPU and PostgreSQL CPU per 1,000
                readings, hyfleet against the naive pipeline, with issue 14's goals marked

bench/run.py makes the plots its results allow at the end of every run. By hand, from saved
results (for each plot the last file that has its data is used):

  python3 bench/plots.py bench/results/A.json [B.json ...] [--out docs/bench]
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

# Text stays text in the SVG (small files that diff), in the reader's sans-serif.
matplotlib.rcParams["svg.fonttype"] = "none"
THOUSANDS = FuncFormatter(lambda x, _: f"{x:,.0f}" if abs(x) >= 100 else f"{x:g}")

COLORS = {"hyfleet": "#1f6feb", "ceiling": "#c9d1d9", "python": "#d29922", "nodered": "#8b3d3d", "naive": "#6e7781"}
NAMES = {"hyfleet": "hyfleet", "ceiling": "ceiling (counting consumer)", "python": "Python peer", "nodered": "Node-RED peer", "naive": "naive pipeline"}


def _median_by_rate(runs, system, key):
    by = {}
    for r in runs:
        if r["system"] == system and r.get(key) is not None:
            by.setdefault(r["rate"], []).append(r[key])
    return sorted((rate, statistics.median(v)) for rate, v in by.items())


def _label(results):
    return f"{results.get('date', '')[:16].replace('T', ' ')} UTC, git {results.get('git', '?')}"


def rates(results, path):
    runs = results["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    top = 0
    for system in ("hyfleet", "python", "nodered"):
        pts = _median_by_rate(runs, system, "stored_per_sec")
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-", color=COLORS[system], label=NAMES[system])
        top = max(top, *xs, *ys)
    over = results.get("overload") or []
    if over:
        x = over[0]["rate"]
        ys = [r["stored_per_sec"] for r in over if r.get("stored_per_sec")]
        ax.plot([x] * len(ys), ys, "x", color=COLORS["hyfleet"], ms=9, label="hyfleet, overload (2× sustained)")
        top = max(top, x, *ys)
        s = over[0]["highest_sustained"]
        ax.axhline(0.9 * s, color=COLORS["hyfleet"], ls=":", lw=1, label=f"0.9 × highest sustained ({0.9 * s:,.0f}/s)")
    lim = top * 1.1
    ax.plot([0, lim], [0, lim], color="#999", lw=0.8, ls="--", label="stored = asked")
    summary = results.get("summary", {})
    bc, cc = summary.get("broker_ceiling_per_sec"), summary.get("copy_ceiling_rows_per_sec")
    if bc:
        ax.axhline(bc, color="black", lw=1.2, label=f"broker ceiling {bc:,.0f}/s")
        lim = max(lim, bc * 1.08)
    if cc:
        if cc < lim * 1.5:
            ax.axhline(cc, color="black", lw=1.2, ls="-.", label=f"COPY ceiling {cc:,.0f} rows/s")
        else:
            ax.plot([], [], " ", label=f"COPY ceiling {cc:,.0f} rows/s (off the chart)")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_xlabel("asked rate (readings/s, simulator)")
    ax.set_ylabel("stored rate (readings/s, publish start → all stored)")
    ax.set_title("Stored against asked, medians of the repeats", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(0.99, 0.01, _label(results), ha="right", fontsize=7, color="#666")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latency(results, path):
    runs = results["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for system in ("hyfleet", "python", "nodered"):
        for key, style, what in (("queryable_p50_ms", "o--", "queryable p50"), ("queryable_p99_ms", "o-", "queryable p99")):
            pts = _median_by_rate(runs, system, key)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=COLORS[system], label=f"{NAMES[system]} {what}")
    for key, style, what in (("webhook_p50_ms", "s--", "webhook p50"), ("webhook_p99_ms", "s-", "webhook p99")):
        pts = _median_by_rate(runs, "hyfleet", key)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, color="#2da44e", label=f"hyfleet {what}")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(THOUSANDS)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_xlabel("asked rate (readings/s)")
    ax.set_ylabel("publish → queryable / webhook (ms, log)")
    ax.set_title("Latency percentiles by rate (probe vehicle, medians of the repeats)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.text(0.99, 0.01, _label(results), ha="right", fontsize=7, color="#666")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def burst(results, path):
    summ = results["burst"]["summary"]
    shapes = list(summ)
    panels = (("readings_per_sec", "readings/s (publish start → all committed)", 1, 1.25, "goal ≥ 1.25 × naive"),
              ("cpu_secs_per_1000", "consumer CPU ms / 1,000 readings", 1000, 0.66, "goal ≤ 0.66 × naive"),
              ("postgres_cpu_secs_per_1000", "PostgreSQL CPU ms / 1,000 readings", 1000, None, None))
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.2))
    systems = [s for s in ("ceiling", "hyfleet", "naive") if any(s in summ[shape] for shape in shapes)]
    w = 0.8 / len(systems)
    for ax, (key, title, scale, goal, goal_label) in zip(axes, panels):
        for j, system in enumerate(systems):
            xs, ys = [], []
            for i, shape in enumerate(shapes):
                r = summ[shape].get(system)
                if r and r.get(key) is not None:
                    xs.append(i + (j - (len(systems) - 1) / 2) * w)
                    ys.append(r[key] * scale)
            bars = ax.bar(xs, ys, w, color=COLORS[system], label=NAMES[system])
            ax.bar_label(bars, fmt="{:,.1f}" if scale != 1 else "{:,.0f}", fontsize=7)
        if goal:
            for i, shape in enumerate(shapes):
                nv = summ[shape].get("naive")
                if nv and nv.get(key):
                    y = nv[key] * scale * goal
                    ax.plot([i - 0.4, i + 0.4], [y, y], color="black", lw=1.5, ls="--",
                            label=goal_label if i == 0 else None)
        ax.set_xticks(range(len(shapes)), [s.replace("x", " × ") for s in shapes])
        ax.yaxis.set_major_formatter(THOUSANDS)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle("Burst of JSON lines by mosquitto_pub -l (publishers × readings), medians", fontsize=11)
    fig.text(0.99, 0.01, _label(results), ha="right", fontsize=7, color="#666")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def make(result_list, out):
    """Writes every plot some result of `result_list` has the data for; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    with_runs = [r for r in result_list if r.get("runs")]
    with_burst = [r for r in result_list if (r.get("burst") or {}).get("summary")]
    if with_runs:
        rates(with_runs[-1], out / "rates.svg")
        latency(with_runs[-1], out / "latency.svg")
        made += [out / "rates.svg", out / "latency.svg"]
    if with_burst:
        burst(with_burst[-1], out / "burst.svg")
        made.append(out / "burst.svg")
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs/bench")
    args = ap.parse_args()
    for p in make([json.loads(p.read_text()) for p in args.results], args.out):
        print(p)


if __name__ == "__main__":
    sys.exit(main())
