#!/usr/bin/python3
"""Charts of a bench-guest.py results.json (Debian's python3-matplotlib).

Usage: bench-guest-plot.py RESULTS.json OUTDIR...

Writes into every OUTDIR: bench-iops-4k.png, bench-bw-1m.png,
bench-iops-4k-N.png, bench-latency-cdf.png, bench-cow.png,
bench-firsttouch.png, bench-redis.png, bench-ratios.png.  Bars are the
medians over the rounds; error bars are their 95% bootstrap intervals
(KEY_ci95 in the results), none where a run has no intervals.

This work is licensed under the terms of the GNU GPL, version 2 or later.
"""
import json
import sys
from pathlib import Path

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("bench-guest-plot: python3-matplotlib missing: no charts", file=sys.stderr)
    sys.exit(0)

CONFIGS = ["host-dax", "raw-dax", "pcow-dax", "pcow-blk", "qcow2-blk"]
COLORS = {"host-dax": "#7f7f7f", "raw-dax": "#1f77b4", "pcow-dax": "#2ca02c",
          "pcow-blk": "#98df8a", "qcow2-blk": "#d62728"}


def val(R, fs, cfg, job, key="iops"):
    try:
        return R["fs"][fs][cfg]["fio"][job][key] or 0
    except (KeyError, TypeError):
        return 0


def ci(R, fs, cfg, job, key="iops"):
    try:
        return R["fs"][fs][cfg]["fio"][job].get(key + "_ci95")
    except (KeyError, TypeError, AttributeError):
        return None


def yerr(ys, cis):
    """matplotlib's yerr (distances below, above) from [lo, hi] pairs."""
    if not any(cis):
        return None
    return [[y - c[0] if c and y else 0 for y, c in zip(ys, cis)],
            [c[1] - y if c and y else 0 for y, c in zip(ys, cis)]]


def title(R, what):
    m = R["meta"]
    return (f"{what}\n{m['accel'].upper()}, {m['params']['vcpus']} vCPUs, "
            f"{m['machine']['cpu'][:40]}{' (quick)' if m['quick'] else ''}")


def grouped(R, jobs, key, ylabel, what, fname, outs, log=True):
    fss = list(R["fs"])
    fig, axes = plt.subplots(1, len(fss), figsize=(5.5 * len(fss), 4.2), squeeze=False)
    for ax, fs in zip(axes[0], fss):
        cfgs = [c for c in CONFIGS if any(val(R, fs, c, j, key) for j, _ in jobs)]
        w = 0.8 / max(len(cfgs), 1)
        for i, c in enumerate(cfgs):
            ys = [val(R, fs, c, j, key) for j, _ in jobs]
            xs = [k + i * w for k in range(len(jobs))]
            cis = [ci(R, fs, c, j, key) for j, _ in jobs]
            bars = ax.bar(xs, ys, w, label=c, color=COLORS[c], capsize=2,
                          yerr=yerr(ys, cis))
            for b, y, c95 in zip(bars, ys, cis):
                if y:
                    ax.text(b.get_x() + b.get_width() / 2, max(y, c95[1] if c95 else 0),
                            f"{y:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks([k + 0.4 - w / 2 for k in range(len(jobs))])
        ax.set_xticklabels([lbl for _, lbl in jobs])
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(f"images on {fs}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title(R, what), fontsize=10)
    fig.tight_layout()
    for o in outs:
        fig.savefig(o / fname, dpi=110)
    plt.close(fig)


def cdf(R, outs):
    fss = list(R["fs"])
    jobs = [("randread-4k-1", "4 KiB random read, 1 thread"),
            ("randwrite-4k-1", "4 KiB random write, 1 thread")]
    fig, axes = plt.subplots(len(fss), 2, figsize=(11, 3.8 * len(fss)), squeeze=False)
    for r, fs in enumerate(fss):
        for c_, (job, lbl) in enumerate(jobs):
            ax = axes[r][c_]
            for c in CONFIGS:
                try:
                    p = R["fs"][fs][c]["fio"][job]["pcts_us"]
                except (KeyError, TypeError):
                    continue
                xs = [v for _, v in p]
                ys = [k / 100 for k, _ in p]
                ax.plot(xs, ys, marker=".", label=c, color=COLORS[c])
            ax.set_xscale("log")
            ax.set_xlabel("completion latency (us, log)")
            ax.set_ylabel("fraction of I/Os")
            ax.set_title(f"{lbl}, images on {fs}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title(R, "Latency CDF (fio clat percentiles)"), fontsize=10)
    fig.tight_layout()
    for o in outs:
        fig.savefig(o / "bench-latency-cdf.png", dpi=110)
    plt.close(fig)


def cow(R, outs):
    fss = list(R["fs"])
    fig, axes = plt.subplots(1, len(fss), figsize=(5.5 * len(fss), 4), squeeze=False)
    for ax, fs in zip(axes[0], fss):
        items = [("raw-dax", "cow", "raw-dax\noverwrite\n(no snapshot)"),
                 ("pcow-dax", "cow", "pcow-dax\n4 KiB COW"),
                 ("pcow-dax", "cow-cluster", "pcow-dax\ncluster COW"),
                 ("pcow-blk", "cow", "pcow-blk\n4 KiB COW"),
                 ("pcow-blk", "cow-cluster", "pcow-blk\ncluster COW"),
                 ("qcow2-blk", "cow", "qcow2-blk\nint. snapshot")]
        items = [i for i in items if val(R, fs, i[0], i[1])]
        ys = [val(R, fs, c, j) for c, j, _ in items]
        bars = ax.bar(range(len(items)), ys, color=[COLORS[c] for c, _, _ in items],
                      capsize=3, yerr=yerr(ys, [ci(R, fs, c, j) for c, j, _ in items]))
        for b, y in zip(bars, ys):
            ax.text(b.get_x() + b.get_width() / 2, y, f"{y:,.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([lbl for _, _, lbl in items], fontsize=7)
        ax.set_ylabel("IOPS (first writes after a snapshot)")
        ax.set_title(f"images on {fs}", fontsize=9)
    fig.suptitle(title(R, "Copy-on-write: 4 KiB random writes over snapshotted data"), fontsize=10)
    fig.tight_layout()
    for o in outs:
        fig.savefig(o / "bench-cow.png", dpi=110)
    plt.close(fig)


def redis(R, outs):
    fss = list(R["fs"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    cfgs = ["raw-dax", "pcow-dax", "qcow2-blk"]
    w = 0.8 / len(fss)
    any_ = False
    for i, fs in enumerate(fss):
        ys, cis = [], []
        for c in cfgs:
            try:
                ys.append(float(R["fs"][fs][c]["redis"]["set"]))
                cis.append(R["fs"][fs][c]["redis"].get("set_ci95"))
            except (KeyError, ValueError, TypeError):
                ys.append(0)
                cis.append(None)
        any_ |= any(ys)
        bars = ax.bar([k + i * w for k in range(len(cfgs))], ys, w, label=f"images on {fs}",
                      color=[COLORS[c] for c in cfgs], alpha=1 - 0.4 * i, edgecolor="k",
                      capsize=3, yerr=yerr(ys, cis))
        for b, y in zip(bars, ys):
            ax.text(b.get_x() + b.get_width() / 2, y, f"{y:,.0f}", ha="center", va="bottom", fontsize=7)
    if not any_:
        plt.close(fig)
        return
    ax.set_xticks([k + w * (len(fss) - 1) / 2 for k in range(len(cfgs))])
    ax.set_xticklabels(["AOF on raw-dax", "AOF on pcow-dax", "AOF on qcow2-blk"])
    ax.set_ylabel("SET requests/s")
    ax.legend(fontsize=7)
    fig.suptitle(title(R, "Redis in the guest, appendfsync always"), fontsize=10)
    fig.tight_layout()
    for o in outs:
        fig.savefig(o / "bench-redis.png", dpi=110)
    plt.close(fig)


RATIOS = [("pcowdax_over_rawdax_4k_randread", "pcow-dax / raw-dax, 4K rand read"),
          ("pcowdax_over_rawdax_4k_randwrite", "pcow-dax / raw-dax, 4K rand write"),
          ("pcowdax_over_rawdax_1m_read_N", "pcow-dax / raw-dax, 1M seq read"),
          ("pcowdax_over_rawdax_1m_write_N", "pcow-dax / raw-dax, 1M seq write"),
          ("pcowdax_over_rawdax_4k_randread_N", "pcow-dax / raw-dax, 4K rand read N"),
          ("pcowdax_over_rawdax_4k_randwrite_N", "pcow-dax / raw-dax, 4K rand write N"),
          ("pcowdax_over_rawdax_firsttouch", "pcow-dax / raw-dax, first touch"),
          ("redis_pcowdax_over_rawdax", "pcow-dax / raw-dax, Redis AOF"),
          ("pcow_cow_over_rawdax_overwrite", "pcow-dax COW / raw-dax overwrite"),
          ("rawdax_over_hostdax_4k_randread", "raw-dax / host-dax, 4K rand read"),
          ("rawdax_over_hostdax_4k_randwrite", "raw-dax / host-dax, 4K rand write")]


def ratios(R, outs):
    """pcow-dax against raw-dax: median of the per-round ratios and its
    95% interval, parity marked."""
    rt = R.get("ratios") or {}
    items = [(k, lbl) for k, lbl in RATIOS if rt.get(k)]
    if not items:
        return
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(items) + 1.6))
    ys = list(range(len(items)))[::-1]
    ms = [rt[k] for k, _ in items]
    cis = [rt.get(k + "_ci95") for k, _ in items]
    err = [[m - c[0] if c else 0 for m, c in zip(ms, cis)],
           [c[1] - m if c else 0 for m, c in zip(ms, cis)]]
    ax.errorbar(ms, ys, xerr=err, fmt="o", color="#2ca02c", capsize=3)
    for y, m, c in zip(ys, ms, cis):
        ax.text(m, y + 0.2, f"{m:.2f}" + (f" [{c[0]:.2f}, {c[1]:.2f}]" if c else ""),
                ha="center", fontsize=6)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvspan(0.95, 1.0, color="#cccccc", alpha=0.4, lw=0)
    ax.set_yticks(ys)
    ax.set_yticklabels([lbl for _, lbl in items], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log; median of the per-round ratios, 95% interval)")
    fig.suptitle(title(R, f"Ratios over {rt.get('rounds')} rounds, images on {rt.get('fs')}"),
                 fontsize=9)
    fig.tight_layout()
    for o in outs:
        fig.savefig(o / "bench-ratios.png", dpi=110)
    plt.close(fig)


def main():
    R = json.loads(Path(sys.argv[1]).read_text())
    outs = [Path(o) for o in sys.argv[2:]]
    for o in outs:
        o.mkdir(parents=True, exist_ok=True)
    grouped(R, [("randread-4k-1", "4K rand read"), ("randwrite-4k-1", "4K rand write")],
            "iops", "IOPS (log)", "4 KiB random I/O, 1 thread", "bench-iops-4k.png", outs)
    grouped(R, [("read-1m-N", "1M seq read"), ("write-1m-N", "1M seq write")],
            "bw_MBps", "MB/s (log)", "1 MiB sequential, N threads (N = vCPUs)", "bench-bw-1m.png", outs)
    grouped(R, [("randread-4k-N", "4K rand read"), ("randwrite-4k-N", "4K rand write")],
            "iops", "IOPS (log)", "4 KiB random, N threads", "bench-iops-4k-N.png", outs)
    grouped(R, [("firsttouch-4k-1", "first-touch 4K write")],
            "iops", "IOPS (log)", "Writes into never-written space (expansion)",
            "bench-firsttouch.png", outs)
    cdf(R, outs)
    cow(R, outs)
    redis(R, outs)
    ratios(R, outs)


if __name__ == "__main__":
    main()
