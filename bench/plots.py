"""The figures in docs/benchmarks.md, drawn from the recorded results.

    .venv/bin/python bench/plots.py [--results bench/results] [--out docs/img]

Reads `throughput.json`, `memory.json` and `peers.json` (written by bench/throughput.py,
bench/memory.py and bench/peers.py) and writes, as SVG:

- `throughput.svg`: requests/s against concurrency for each server (each point is the
  round with the median throughput; the rounds' spread as an error bar when the run had
  several), with the in-process ceiling as a note;
- `memory.svg`: the daemon's RSS after each of the 200 swaps, against one copy of the
  model above the RSS with no model loaded: a leak would be a rising line;
- `peers.svg` (from `peers.json`, bench/peers.py): each server's answers/s at the highest
  concurrency and its CPU-seconds per 1,000 requests, with the rounds' spread;
- `ray_serve.svg` (from `ray_serve.json`, bench/ray_serve.py): the Ray cluster's and the
  daemon's answers/s against concurrency, REST and gRPC side by side, with the rounds'
  spread.

Needs matplotlib (`make bench-install`); nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

LABELS = {
    "modelwatch_batching": "modelwatch, batching",
    "modelwatch": "modelwatch, no batching",
    "flask_gunicorn": "Flask + gunicorn (2 x 8)",
}


def _saved(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _throughput_line(ax: Any, by_c: dict[str, Any], label: str) -> None:
    """Answers/s against concurrency (the median round), the rounds' spread as error bars,
    the last point's figure beside it."""
    levels = sorted(by_c, key=int)
    xs = [int(c) for c in levels]
    ys = [by_c[c]["throughput_rps"] for c in levels]
    rounds = [by_c[c].get("rounds_throughput_rps", [by_c[c]["throughput_rps"]]) for c in levels]
    low = [y - min(r) for y, r in zip(ys, rounds)]
    high = [max(r) - y for y, r in zip(ys, rounds)]
    ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.annotate(f"{ys[-1]:,.0f}", (xs[-1], ys[-1]), textcoords="offset points",
                xytext=(-8, 6), fontsize=8, ha="right")


def plot_throughput(result: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    results = result["results"]
    for variant, label in LABELS.items():
        if variant not in results:
            continue
        _throughput_line(ax, results[variant]["by_concurrency"], label)
    ceiling = results.get("in_process", {}).get("batch_32", {}).get("instances_per_s")
    if ceiling:  # an order of magnitude above: a note, not a line that flattens the rest
        ax.text(0.98, 0.03, f"the model alone, in process, full batches of 32: "
                f"{ceiling:,.0f} instances/s", transform=ax.transAxes, ha="right",
                fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 8, 32], ["1", "8", "32"])
    ax.set_xlabel("concurrent clients (hey -c)")
    ax.set_ylabel("answers per second")
    ax.set_title(f"REST predict, MLP 64-512-512-10, one instance a request ({result['date'][:10]})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _saved(fig, out / "throughput.svg")


def plot_memory(result: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    swaps = result["many_swaps"]
    series = swaps["rss_after_each_swap_mib"]
    peak = result["peak_during_one_swap"]["availability_preserving"]
    no_model, one_copy = peak["rss_no_model_mib"], peak["one_copy_mib"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(range(1, len(series) + 1), series, label="RSS after each swap")
    ax.axhline(no_model, color="grey", linestyle=":", linewidth=1)
    ax.axhline(no_model + one_copy, color="grey", linestyle="--", linewidth=1)
    ax.axhline(no_model + 2 * one_copy, color="grey", linestyle="--", linewidth=1)
    for copies, text in ((0, "no model loaded"), (1, "+ one copy of the model"),
                         (2, "+ two copies")):
        ax.annotate(text, (1, no_model + copies * one_copy), textcoords="offset points",
                    xytext=(2, 3), fontsize=8, color="grey")
    ax.set_ylim(no_model - one_copy * 0.5, no_model + one_copy * 2.5)
    ax.set_xlabel(f"swap ({swaps['transition']})")
    ax.set_ylabel("daemon RSS (MiB)")
    ax.set_title(f"{len(series)} swaps of a {result['model']['mib_on_disk']} MiB model: "
                 f"{swaps['growth_pct']:+.1f}% ({result['date'][:10]})", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _saved(fig, out / "memory.svg")


def plot_peers(result: dict[str, Any], out: Path) -> Path:
    """bench/peers.py: answers/s at the highest concurrency and server CPU per 1,000
    requests, one bar per server (the median round; the rounds' spread as an error bar)."""
    import matplotlib.pyplot as plt

    top = str(max(result["parameters"]["concurrency"]))
    rows = [(result["peers"].get(name, {}).get("label", name), r["by_concurrency"][top])
            for name, r in result["results"].items() if top in r.get("by_concurrency", {})]
    rows.sort(key=lambda row: row[1]["throughput_rps"] or 0)
    labels = [label for label, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.6), sharey=True)
    for ax, key, spread, title in (
            (left, "throughput_rps", "spread_throughput_rps", f"answers per second, c={top}"),
            (right, "median_cpu_s_per_1000", "spread_cpu_s_per_1000",
             "server CPU-seconds per 1,000 requests")):
        values = [s[key] or 0 for _, s in rows]
        low = [v - (s[spread] or [v, v])[0] for v, (_, s) in zip(values, rows)]
        high = [(s[spread] or [v, v])[1] - v for v, (_, s) in zip(values, rows)]
        colours = ["tab:blue" if label.startswith("modelwatch") else "tab:grey"
                   for label in labels]
        ax.barh(labels, values, xerr=[low, high], capsize=3, color=colours)
        for y, v in enumerate(values):
            ax.annotate(f"{v:,.0f}" if key == "throughput_rps" else f"{v:.2f}", (v, y),
                        textcoords="offset points", xytext=(8, -3), fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    rounds = result["parameters"]["rounds"]
    fig.suptitle(f"MLP 64-512-512-10, one instance a request, {rounds} interleaved "
                 f"round{'s' if rounds != 1 else ''} ({result['date'][:10]})", fontsize=10)
    return _saved(fig, out / "peers.svg")


def plot_ray_serve(result: dict[str, Any], out: Path) -> Path:
    """bench/ray_serve.py: answers/s against concurrency, cluster and daemon, per transport."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, transport, tool in zip(axes, ("rest", "grpc"), ("REST (hey)", "gRPC (h2load)")):
        for side, label in (("cluster", "Ray cluster: 2 replicas, HAProxy"),
                            ("daemon", "modelwatch serve")):
            _throughput_line(ax, result["median"][f"{side}_{transport}"], label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 32], ["1", "8", "32"])
        ax.set_xlabel("concurrent clients")
        ax.set_title(tool, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("answers per second")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"MLP 64-512-512-10, one instance a request, 2 cores shared by both sides "
                 f"({result['date'][:10]})", fontsize=10)
    return _saved(fig, out / "ray_serve.svg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "modelwatch"  # the same figure, the same file
    matplotlib.rcParams["svg.fonttype"] = "none"
    results, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, plot in (("throughput", plot_throughput), ("memory", plot_memory),
                       ("peers", plot_peers), ("ray_serve", plot_ray_serve)):
        source = results / f"{name}.json"
        if not source.exists():
            print(f"skipped {name}: no {source}", file=sys.stderr)
            continue
        print(f"wrote {plot(json.loads(source.read_text()), out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
