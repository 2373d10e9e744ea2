"""Medians of several `make bench` runs: `python bench/summary.py bench/results/A.json bench/results/B.json ...`.

Prints one Markdown table per half (large requests, small batches): per case the median over the runs, and the
lowest and highest run in brackets, so one noisy run on a shared machine does not make the figure."""
import json
import statistics
import sys


def spread(values, fmt):
    values = sorted(values)
    med = statistics.median(values)
    return fmt.format(med) if len(values) == 1 else f"{fmt.format(med)} ({fmt.format(values[0])}-{fmt.format(values[-1])})"


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    cases = {}
    for run in runs:
        for r in run["results"]:
            cases.setdefault((r["dataset"], r["rows"], r["case"]), []).append(r)
    print(f"{len(runs)} runs: " + ", ".join(run["when"] for run in runs) + f"; DuckDB {runs[0]['duckdb']}, {runs[0]['cores']} cores")
    print()
    print("| dataset | rows | case | M rows/s | vs in-process | host RSS before / peak / after (MiB, medians) |")
    print("|---|---:|---|---:|---:|---|")
    for (dataset, rows, case), rs in cases.items():
        if dataset == "small":
            continue
        rss = " / ".join(f"{statistics.median(r[k] for r in rs):.0f}" for k in ("rss_before_mib", "rss_peak_mib", "rss_after_mib"))
        print(f"| {dataset} | {rows:,} | {case} | {spread([r['rows_per_s'] / 1e6 for r in rs], '{:.2f}')} | "
              f"{spread([r['vs_baseline'] for r in rs], '{:.2f}x')} | {rss} |")
    print()
    print("| small batches (1,000 rows each) | batches/min | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for (dataset, rows, case), rs in cases.items():
        if dataset == "small":
            print(f"| {case} | {spread([r['batches_per_min'] for r in rs], '{:,.0f}')} | {spread([r['p50_ms'] for r in rs], '{:.1f}')} | "
                  f"{spread([r['p99_ms'] for r in rs], '{:.1f}')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
