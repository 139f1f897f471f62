#!/usr/bin/env python
"""Draw the benchmark results as one PNG: bruno_memory_c against the reference and peers.

    .venv/bin/python -m benchmarks.chart [--results DIR] [--output PATH]

Reads the JSON files the benchmark scripts write (bench_inmemory.py -> inmemory.json,
bench_redis.py -> redis.json / redis-uvloop.json, bench_multilevel.py -> multilevel.json /
multilevel-uvloop.json) and draws benchmarks/results/benchmarks.png:

1. InMemoryCache: ns per operation (log scale) for the headline operations, ours vs the
   reference vs cachetools, with the "floor" (awaiting a trivial coroutine over a dict).
2. RedisCache: gets/s against concurrent tasks (default asyncio loop), ours vs the
   reference vs redis-py vs valkey-glide, with the redis-benchmark ceiling. A contender
   that lost requests is drawn with its successful gets per second only, and says so.
3. MultiLevelCache: L1-hit ns per get, and Zipf workload ops/s at 1 and 100 tasks (the
   reference's failed operations hatched on top of its successful ones).

A missing file or key skips the panel concerned (a note on stderr and in the panel); the
script never imports bruno_memory_c and runs no benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results")

OURS = "bruno_memory_c"
REF = "reference (bruno-memory 0.1.5)"

COLORS = {
    "ours": "#1764ab",
    "ours-light": "#7fb2e5",
    "reference": "#d9472b",
    "reference-light": "#f2a38f",
    "cachetools LRU": "#6b9e5a",
    "cachetools TTL": "#a07cc5",
    "redis-py": "#3c9d3c",
    "glide": "#9467bd",
    "floor": "#222222",
    "ceiling": "#444444",
}


def note(msg: str) -> None:
    print(f"chart.py: {msg}", file=sys.stderr)


def load(results: str, name: str) -> dict | None:
    path = os.path.join(results, name)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        note(f"{path} not found")
        return None
    except (OSError, ValueError) as e:
        note(f"{path} unreadable: {e}")
        return None
    if not isinstance(data, dict):
        note(f"{path}: not a JSON object")
        return None
    return data


def fmt_count(x: float) -> str:
    """1234 -> '1.2k', 563954 -> '564k', 1.2e6 -> '1.2M'."""
    if x >= 1e6:
        return f"{x / 1e6:.2g}M" if x < 1e7 else f"{x / 1e6:.0f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_ns(x: float) -> str:
    if x >= 1e4:
        return f"{x / 1e3:.0f} µs"
    if x >= 1e3:
        return f"{x / 1e3:.1f} µs"
    return f"{x:.0f} ns"


def fmt_ratio(r: float) -> str:
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def axis_count_formatter(ax, axis: str = "y") -> None:
    fmt = FuncFormatter(lambda v, _: fmt_count(v))
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def skip_panel(ax, title: str, why: str) -> None:
    note(f"skipping panel '{title}': {why}")
    ax.set_axis_off()
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left", pad=17)
    ax.text(0.5, 0.5, f"no data:\n{why}", ha="center", va="center", fontsize=10,
            color="#888888", transform=ax.transAxes, wrap=True)


# ------------------------------------------------------------------ panel 1


INMEMORY_OPS = [  # (key in the JSON, tick label)
    ("get-hit", "get hit"),
    ("get-miss", "get miss"),
    ("set overwrite", "set\n(overwrite)"),
    ("set eviction", "set\n(evicts one)"),
    ("get_many(100)", "get_many\n100 keys\n(per call)"),
    ("set_many(100)", "set_many\n100 keys\n(per call)"),
]


def panel_inmemory(ax, data: dict | None) -> bool:
    title = "InMemoryCache: time per operation"
    if data is None:
        skip_panel(ax, title, "inmemory.json missing")
        return False
    med = data.get("median_ns")
    if not isinstance(med, dict):
        skip_panel(ax, title, "inmemory.json has no 'median_ns'")
        return False
    ops = [(k, lbl) for k, lbl in INMEMORY_OPS
           if isinstance(med.get(k), dict) and "ours" in med[k]]
    missing = [k for k, _ in INMEMORY_OPS if (k, _) not in ops]
    if missing:
        note(f"inmemory.json: no figures for {', '.join(missing)}")
    if not ops:
        skip_panel(ax, title, "inmemory.json has no figures for ours")
        return False

    bars = [("ours", OURS), ("reference", REF),
            ("cachetools LRU", "cachetools.LRUCache (sync)"),
            ("cachetools TTL", "cachetools.TTLCache (sync)")]
    bars = [(c, lbl) for c, lbl in bars if any(c in med[k] for k, _ in ops)]
    n = len(bars)
    width = 0.8 / n
    ymax = 0.0
    for i, (c, lbl) in enumerate(bars):
        xs, ys = [], []
        for j, (k, _) in enumerate(ops):
            v = med[k].get(c)
            if isinstance(v, (int, float)) and v > 0:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v)
                ymax = max(ymax, v)
        kw = {}
        if c == "ours":
            kw = {"edgecolor": "black", "linewidth": 0.8}
        ax.bar(xs, ys, width * 0.95, label=lbl, color=COLORS[c], zorder=3, **kw)
        if c == "ours":
            for x, y in zip(xs, ys):
                ax.text(x, y * 0.85, fmt_ns(y), ha="center", va="top", fontsize=7.5,
                        color="white", fontweight="bold", zorder=5, rotation=90)

    # The floor: awaiting a trivial coroutine over a dict (what any async API pays).
    floor_drawn = False
    for j, (k, _) in enumerate(ops):
        v = med[k].get("floor")
        if isinstance(v, (int, float)) and v > 0:
            ax.hlines(v, j - 0.44, j + 0.44, colors=COLORS["floor"], linestyles=(0, (4, 2)),
                      linewidth=1.4, zorder=4,
                      label=None if floor_drawn else "floor: await async def over a dict")
            floor_drawn = True

    # Speed-up over the reference, above each group.
    for j, (k, _) in enumerate(ops):
        o, r = med[k].get("ours"), med[k].get("reference")
        if isinstance(o, (int, float)) and isinstance(r, (int, float)) and o > 0:
            top = max(v for v in med[k].values() if isinstance(v, (int, float)))
            ax.text(j, top * 1.35, f"{fmt_ratio(r / o)}\nfaster", ha="center", va="bottom",
                    fontsize=9.5, fontweight="bold", color=COLORS["ours"])
    ax.set_yscale("log")
    ax.set_ylim(top=ymax * 8)
    ax.set_ylim(bottom=20)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_ns(v)))
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels([lbl for _, lbl in ops], fontsize=9)
    ax.set_xlim(-0.55, len(ops) - 0.45)
    ax.set_ylabel("time per operation (log scale)  —  lower is better")
    ax.grid(axis="y", which="major", alpha=0.35, zorder=0)
    ax.grid(axis="y", which="minor", alpha=0.12, zorder=0)
    cfg = data.get("config", {}) if isinstance(data.get("config"), dict) else {}
    rounds = cfg.get("rounds")
    size = cfg.get("cache_size")
    sub = []
    if size:
        sub.append(f"{size:,} entries, str keys")
    if rounds:
        sub.append(f"median of {rounds} interleaved rounds")
    sub.append("\"Nx faster\" = reference / ours")
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left", pad=17)
    ax.text(0, 1.01, "; ".join(sub), transform=ax.transAxes, fontsize=8.5, color="#555555",
            va="bottom")
    ax.legend(loc="upper left", fontsize=8.5, framealpha=0.92, ncol=2)
    return True


# ------------------------------------------------------------------ panel 2


def _bad_total(b) -> int:
    if not isinstance(b, dict):
        return 0
    return sum(int(b.get(k) or 0) for k in ("lost", "error", "wrong"))


def throughput_series(data: dict, contender: str):
    """[(tasks, plotted gets/s, raw gets/s, bad, requests)] for one contender.

    The plotted figure is successful gets per second: the median over the rounds of
    (requests - lost - error - wrong) / elapsed (the raw figure counts failures too).
    """
    out = []
    tp = data["throughput"]
    for conc in sorted(tp, key=lambda s: int(s)):
        m = tp[conc].get(contender)
        if not isinstance(m, dict) or "ops_per_s" not in m:
            continue
        raw = float(m["ops_per_s"])
        bad = _bad_total(m.get("bad"))
        req = int(m.get("requests_total") or 0)
        good = raw
        if bad:
            rounds = m.get("rounds") or []
            per_round = [(r["requests"] - _bad_total(r.get("bad"))) / (r["elapsed_ns"] / 1e9)
                         for r in rounds
                         if isinstance(r, dict) and r.get("elapsed_ns") and "requests" in r]
            if per_round:
                good = statistics.median(per_round)
            elif req:
                good = raw * (1 - bad / req)
        out.append((int(conc), good, raw, bad, req))
    return out


def panel_redis(ax, data: dict | None, data_uv: dict | None) -> bool:
    title = "RedisCache: get throughput vs concurrency"
    if data is None:
        skip_panel(ax, title, "redis.json missing")
        return False
    if not isinstance(data.get("throughput"), dict) or not data["throughput"]:
        skip_panel(ax, title, "redis.json has no 'throughput'")
        return False
    loop = (data.get("config") or {}).get("loop", "asyncio")

    lines = [("ours", OURS, "o", 2.6), ("reference", REF, "s", 1.8),
             ("redis-py", "redis-py + hiredis (raw)", "^", 1.6),
             ("glide", "valkey-glide (raw)", "D", 1.6)]
    series = {}
    for c, lbl, marker, lw in lines:
        s = throughput_series(data, c)
        if not s:
            note(f"redis.json: no throughput figures for {c}")
            continue
        series[c] = s
        lossy = any(bad for _, _, _, bad, _ in s)
        label = f"{lbl} (successful only)" if lossy else lbl
        xs = [t for t, *_ in s]
        ys = [g for _, g, *_ in s]
        ax.plot(xs, ys, marker=marker, linewidth=lw, markersize=7 if c == "ours" else 5.5,
                color=COLORS[c], label=label, zorder=4 if c == "ours" else 3,
                linestyle="--" if lossy else "-")
        if lossy:
            for t, g, raw, bad, req in s:
                if bad and req:
                    ax.annotate(f"lost {100 * bad / req:.0f}%\nof its gets",
                                (t, g), textcoords="offset points", xytext=(0, 8),
                                ha="center", va="bottom", fontsize=8, color=COLORS[c],
                                fontweight="bold")
    if "ours" not in series:
        skip_panel(ax, title, "redis.json has no throughput figures for ours")
        return False

    if data_uv is not None:
        try:
            s = throughput_series(data_uv, "ours")
        except (KeyError, TypeError, ValueError) as e:
            note(f"redis-uvloop.json: unusable ({e!r}); uvloop line left out")
            s = []
        if s:
            ax.plot([t for t, *_ in s], [g for _, g, *_ in s], marker="o", markersize=4,
                    linewidth=1.2, linestyle=":", color=COLORS["ours-light"],
                    label=f"{OURS} with uvloop", zorder=2)

    ceiling = (data.get("ceiling") or {}).get("median_rps")
    if isinstance(ceiling, (int, float)) and ceiling > 0:
        ax.axhline(ceiling, color=COLORS["ceiling"], linestyle="--", linewidth=1.3, zorder=1,
                   label="redis-benchmark ceiling (C client, -P 16 -c 50)")
        ax.text(0.985, ceiling * 1.08, f"ceiling {fmt_count(ceiling)} GET/s",
                transform=ax.get_yaxis_transform(), fontsize=8.5, color=COLORS["ceiling"],
                va="bottom", ha="right")
    else:
        note("redis.json: no redis-benchmark ceiling")

    # Ratios, ours over each other contender, as a small table in the panel.
    ours = {t: g for t, g, *_ in series["ours"]}
    xs = sorted(ours)
    rows = []
    for c, lbl in (("reference", "reference"), ("redis-py", "redis-py"),
                   ("glide", "valkey-glide")):
        if c not in series:
            continue
        other = {t: g for t, g, *_ in series[c]}
        lossy = any(bad for _, _, _, bad, _ in series[c])
        cells = [fmt_ratio(ours[t] / other[t]) if other.get(t) else "-" for t in xs]
        rows.append((lbl + ("*" if lossy else ""), cells, lossy))
    if rows:
        w = max(len(r[0]) for r in rows)
        lines = ["ours ÷ ...".ljust(w) + "".join(f"{t:>7}" for t in xs) + "  tasks"]
        lines += [lbl.ljust(w) + "".join(f"{c:>7}" for c in cells) for lbl, cells, _ in rows]
        if any(lossy for *_, lossy in rows):
            lines.append("* vs its successful gets only")
        ax.text(0.98, 0.025, "\n".join(lines), transform=ax.transAxes, ha="right",
                va="bottom", fontsize=8, family="monospace", color=COLORS["ours"],
                multialignment="left",
                bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "#bbbbbb",
                      "alpha": 0.95}, zorder=6)

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(xs[0] / 1.6, xs[-1] * 1.6)
    ymin = min(g for s in series.values() for _, g, *_ in s)
    ymax = max([g for s in series.values() for _, g, *_ in s] + [ceiling or 0])
    ax.set_ylim(ymin / 12, ymax * 12)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
    axis_count_formatter(ax)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrent tasks (asyncio.gather)")
    ax.set_ylabel("successful gets per second (log)  —  higher is better")
    ax.grid(which="major", alpha=0.35)
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left", pad=17)
    ref_pool = (data.get("config") or {}).get("reference_pool")
    keys = (data.get("config") or {}).get("keys")
    sub = f"{loop} event loop" + (f", {keys:,} keys" if isinstance(keys, int) else "")
    if ref_pool:
        sub += "; reference: pool of 10, gets beyond it return None"
    ax.text(0, 1.01, sub, transform=ax.transAxes, fontsize=8.5, color="#555555",
            va="bottom")
    ax.legend(loc="upper left", fontsize=8, framealpha=0.92)
    return True


# ------------------------------------------------------------------ panel 3


def panel_l1(ax, data: dict | None) -> bool:
    title = "MultiLevelCache: L1-hit get"
    if data is None:
        skip_panel(ax, title, "multilevel.json missing")
        return False
    l1 = data.get("l1_hit")
    if not isinstance(l1, dict):
        skip_panel(ax, title, "multilevel.json has no 'l1_hit'")
        return False
    bars = [("ours MultiLevelCache", "ours\nMultiLevelCache", COLORS["ours"]),
            ("ours InMemoryCache", "ours, bare\nInMemoryCache", COLORS["ours-light"]),
            ("reference MultiLevelCache", "reference\nMultiLevelCache", COLORS["reference"])]
    bars = [(k, lbl, col, l1[k]["median_ns"]) for k, lbl, col in bars
            if isinstance(l1.get(k), dict) and isinstance(l1[k].get("median_ns"), (int, float))]
    if not any(k == "ours MultiLevelCache" for k, *_ in bars):
        skip_panel(ax, title, "multilevel.json has no L1-hit figure for ours")
        return False
    ys = [v for *_, v in bars]
    ax.barh(range(len(bars)), ys, color=[c for _, _, c, _ in bars], height=0.62, zorder=3,
            edgecolor=["black" if k == "ours MultiLevelCache" else "none" for k, *_ in bars],
            linewidth=0.8)
    ours = dict((k, v) for k, _, _, v in bars)["ours MultiLevelCache"]
    for i, (k, _, _, v) in enumerate(bars):
        if k == "reference MultiLevelCache":
            ax.text(v * 0.97, i, f"{v:.0f} ns", va="center", ha="right", fontsize=9.5,
                    fontweight="bold", color="white")
            ax.text(v * 1.02, i, f"ours\n{fmt_ratio(v / ours)}\nfaster", va="center",
                    ha="left", fontsize=9.5, fontweight="bold", color=COLORS["ours"])
            continue
        txt = f"{v:.0f} ns"
        imc = dict((kk, vv) for kk, _, _, vv in bars).get("ours InMemoryCache")
        if k == "ours MultiLevelCache" and imc:
            txt += f"  ({ours / imc:.2f}x the bare get)"
        ax.text(v + max(ys) * 0.015, i, txt, va="center", ha="left", fontsize=9,
                fontweight="bold" if k != "ours InMemoryCache" else "normal")
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([lbl for _, lbl, _, _ in bars], fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlim(0, max(ys) * 1.3)
    ax.set_xlabel("ns per get (L1 hit)  —  lower is better", fontsize=9)
    ax.grid(axis="x", alpha=0.35, zorder=0)
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left", pad=17)
    return True


def zipf_ratios(d: dict, conc: str):
    """(ours ÷ reference ops/s, ours ÷ reference successful ops/s or None)."""
    o, r = d[conc]["ours"], d[conc]["reference"]
    ops, rops = float(o["ops_per_s"]), float(r["ops_per_s"])
    good = float(o.get("goodput_per_s", ops))
    rgood = float(r.get("goodput_per_s", rops))
    return ops / rops, (good / rgood if rgood < rops * 0.999 else None)


def panel_zipf(ax, data: dict | None, data_uv: dict | None) -> bool:
    title = "MultiLevelCache: Zipf workload"
    if data is None:
        skip_panel(ax, title, "multilevel.json missing")
        return False
    zipf = data.get("zipf")
    if not isinstance(zipf, dict) or not zipf:
        skip_panel(ax, title, "multilevel.json has no 'zipf'")
        return False
    concs = sorted((c for c in zipf if isinstance(zipf[c], dict) and "ours" in zipf[c]),
                   key=int)
    if not concs:
        skip_panel(ax, title, "multilevel.json has no Zipf figures for ours")
        return False

    bars = ["ours", "reference"]
    width = 0.72 / len(bars)
    ymax, ymin = 0.0, float("inf")
    hatched_any = False
    for i, c in enumerate(bars):
        col = COLORS[c]
        for j, conc in enumerate(concs):
            m = zipf[conc].get(c)
            if not isinstance(m, dict) or "ops_per_s" not in m:
                continue
            x = j - 0.36 + width * (i + 0.5)
            ops = float(m["ops_per_s"])
            good = float(m.get("goodput_per_s", ops))
            ymax, ymin = max(ymax, ops), min(ymin, good)
            if ops > good * 1.001:  # failed operations: hatched on top
                ax.bar(x, ops, width * 0.95, color="white", edgecolor=col, hatch="////",
                       linewidth=0.8, zorder=2)
                ax.text(x, ops * 1.05, f"{fmt_count(ops)}\nincl. failed", ha="center",
                        va="bottom", fontsize=7.5, color=col)
                hatched_any = True
            ax.bar(x, good, width * 0.95, color=col, zorder=3,
                   edgecolor="black" if c == "ours" else "none", linewidth=0.8)
            ax.text(x, good * 0.85, fmt_count(good), ha="center", va="top", fontsize=8.5,
                    color="white", fontweight="bold", zorder=5)
        if c == "ours":
            for j, conc in enumerate(concs):
                try:
                    r, rg = zipf_ratios(zipf, conc)
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    continue
                top = max(float(zipf[conc][k]["ops_per_s"]) for k in ("ours", "reference"))
                txt = f"{fmt_ratio(r)}" + (f"\n({fmt_ratio(rg)} vs its\nsuccessful ops)"
                                           if rg else "")
                ax.text(j - 0.5 * width if rg else j, top * (2.6 if rg else 1.4), txt, ha="center", va="bottom", fontsize=9.5,
                        fontweight="bold", color=COLORS["ours"])
    ax.set_yscale("log")
    ax.set_ylim(ymin / 2, ymax * 25)
    axis_count_formatter(ax)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(range(len(concs)))
    ax.set_xticklabels([f"{c} task{'s' if int(c) != 1 else ''}" for c in concs], fontsize=9)
    ax.set_xlim(-0.6, len(concs) - 0.4)
    ax.set_ylabel("ops/s (log) — higher is better", fontsize=9)
    ax.grid(axis="y", alpha=0.35, zorder=0)
    cfg = data.get("config") or {}
    s, rf = cfg.get("zipf_s"), cfg.get("read_fraction")
    ax.set_title(title, fontsize=12, fontweight="bold", loc="left", pad=17)
    if s is not None and rf is not None:
        keys = cfg.get("keys")
        sub = (f"Zipf s={s}, {rf:.0%} get / {1 - rf:.0%} set"
               + (f", {keys:,} keys" if isinstance(keys, int) else "")
               + (f", L1 {cfg['l1_max_size']:,}" if isinstance(cfg.get("l1_max_size"), int)
                  else ""))
        ax.text(0, 1.01, sub, transform=ax.transAxes, fontsize=8, color="#555555",
                va="bottom")
    handles = [Patch(facecolor=COLORS["ours"], edgecolor="black", label=OURS),
               Patch(facecolor=COLORS["reference"], label="reference, successful ops")]
    if hatched_any:
        handles.append(Patch(facecolor="white", edgecolor=COLORS["reference"], hatch="////",
                             label="reference, failed ops\n(lost gets, set errors)"))
    ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.92)
    loop = cfg.get("loop", "asyncio")
    uv = []
    if data_uv is not None:
        try:
            for conc in concs:
                r, rg = zipf_ratios(data_uv["zipf"], conc)
                uv.append(f"{conc}: {fmt_ratio(r)}" + (f" ({fmt_ratio(rg)})" if rg else ""))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            note(f"multilevel-uvloop.json: no usable Zipf figures ({e!r})")
            uv = []
    foot = f"{loop} loop; ratios = ours ÷ reference"
    if uv:
        foot += "\nwith uvloop: " + ", ".join(uv) + " tasks"
    ax.set_xlabel(foot, fontsize=8, color="#555555")
    return True


# ------------------------------------------------------------------ figure


def machine_line(files: dict) -> str:
    seen = []
    for name, d in files.items():
        m = d.get("machine") if isinstance(d, dict) else None
        if not isinstance(m, dict):
            continue
        desc = (f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('nproc', '?')} CPUs, "
                f"{m.get('python_implementation', 'Python')} {m.get('python', '?')}, "
                f"{m.get('platform', '?')}")
        if desc not in [s for s, _ in seen]:
            seen.append((desc, [name]))
        else:
            dict(seen)[desc].append(name)
    if not seen:
        return "machine: not recorded"
    if len(seen) == 1:
        return f"Machine: {seen[0][0]}"
    return "Machines: " + "; ".join(f"{s} ({', '.join(n)})" for s, n in seen)


def versions_line(files: dict) -> str:
    v = {}
    for d in files.values():
        m = d.get("machine") if isinstance(d, dict) else None
        if isinstance(m, dict):
            for k in ("bruno_memory_c", "bruno_memory_reference", "cachetools", "redis_server",
                      "redis_py", "hiredis", "valkey_glide"):
                if m.get(k) and k not in v:
                    v[k] = m[k]
    names = {"bruno_memory_c": "bruno_memory_c", "bruno_memory_reference": "bruno-memory",
             "cachetools": "cachetools", "redis_server": "redis-server",
             "redis_py": "redis-py", "hiredis": "hiredis", "valkey_glide": "valkey-glide"}
    return ", ".join(f"{names[k]} {v[k]}" for k in names if k in v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS,
                   help="directory holding the benchmark JSON files (default: %(default)s)")
    p.add_argument("--output", default=None,
                   help="PNG to write (default: RESULTS/benchmarks.png)")
    opts = p.parse_args(argv)
    output = opts.output or os.path.join(opts.results, "benchmarks.png")

    names = ["inmemory.json", "redis.json", "redis-uvloop.json", "multilevel.json",
             "multilevel-uvloop.json"]
    files = {n: load(opts.results, n) for n in names}

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False,
                         "axes.spines.right": False})
    fig = plt.figure(figsize=(16, 9), dpi=100)
    gs = fig.add_gridspec(2, 3, width_ratios=[1.3, 1.1, 0.9], height_ratios=[1, 1.25],
                          left=0.055, right=0.985, top=0.87, bottom=0.13, wspace=0.27,
                          hspace=0.42)
    ax1 = fig.add_subplot(gs[:, 0])
    ax2 = fig.add_subplot(gs[:, 1])
    ax3 = fig.add_subplot(gs[0, 2])
    ax4 = fig.add_subplot(gs[1, 2])

    drawn = 0
    panels = [
        ("InMemoryCache", lambda: panel_inmemory(ax1, files["inmemory.json"]), ax1),
        ("RedisCache", lambda: panel_redis(ax2, files["redis.json"],
                                           files["redis-uvloop.json"]), ax2),
        ("MultiLevelCache L1 hit", lambda: panel_l1(ax3, files["multilevel.json"]), ax3),
        ("MultiLevelCache Zipf", lambda: panel_zipf(ax4, files["multilevel.json"],
                                                    files["multilevel-uvloop.json"]), ax4),
    ]
    for name, draw, ax in panels:
        try:
            drawn += bool(draw())
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
            ax.clear()
            skip_panel(ax, name, f"unexpected data ({type(e).__name__}: {e})")

    if not drawn:
        note(f"no panel could be drawn from {opts.results}; nothing written")
        plt.close(fig)
        return 1

    fig.suptitle(f"{OURS} vs the reference (bruno-memory 0.1.5) and peers",
                 fontsize=16, fontweight="bold", x=0.055, ha="left", y=0.975)
    present = {n: d for n, d in files.items() if d is not None}
    stamps = sorted(d.get("timestamp", "")[:10] for d in present.values() if d.get("timestamp"))
    sub = machine_line(present)
    if stamps:
        sub += f"  ·  runs of {stamps[0]}" + (f" to {stamps[-1]}" if stamps[-1] != stamps[0]
                                              else "")
    fig.text(0.055, 0.925, sub, fontsize=10.5, color="#333333", ha="left")
    foot = versions_line(present)
    foot += ("\nFigures are medians over interleaved rounds, all contenders in one run on one "
             "machine, one local redis-server. Sources: " +
             ", ".join(n for n in names if files[n] is not None) + ".")
    fig.text(0.055, 0.015, foot, fontsize=8.5, color="#555555", ha="left", va="bottom")

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.relpath(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
