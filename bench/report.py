#!/usr/bin/env python3
"""Turns the work files of scripts/bench into BENCHMARKS.md and an SVG latency plot.

usage: report.py WORKDIR BENCHMARKS.md latency.svg

Standard library only. Hand-written analysis (profiles, what would move a target) lives
in bench/notes.md and is appended to the generated file as it is.
"""
import glob
import json
import os
import re
import sys
from datetime import datetime, timezone

work, out_md, out_svg = sys.argv[1], sys.argv[2], sys.argv[3]
here = os.path.dirname(os.path.abspath(__file__))


def read(name):
    with open(os.path.join(work, name)) as f:
        return f.read()


def have(name):
    return os.path.exists(os.path.join(work, name))


def wrk(name):
    return json.loads(read(name + ".json"))


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    rank = round(p / 100 * (len(sorted_values) - 1))
    return sorted_values[min(rank, len(sorted_values) - 1)]


def rps(w):
    return w["ok"] / (w["duration_us"] / 1e6)


def ms(us):
    return us / 1000.0


clk = int(read("clk_tck"))
cores = int(read("nproc"))


def cpu_per_1000(ticks_before, ticks_after, refreshes):
    if refreshes <= 0:
        return float("nan")
    return (ticks_after - ticks_before) / clk / refreshes * 1000


def cpu(name):
    """The (before, after) CPU ticks a run recorded in `name`."""
    return tuple(map(int, read(name).split()))


rows = []  # id, scenario, p50 ms, p99 ms, throughput, baseline, ratio, target, pass
series = []  # label, p50 ms, p99 ms

# P1 ---------------------------------------------------------------------------------
if have("p1.json"):
    pgb_text = read("p1_pgbench.txt")
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", pgb_text)
    pgb_tps = float(m.group(1)) if m else float("nan")
    lat = []
    for path in glob.glob(os.path.join(work, "p1_pgbench.*")):
        if path.endswith(".txt"):
            continue
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    lat.sort()
    pgb_p50, pgb_p99 = ms(pct(lat, 50)), ms(pct(lat, 99))
    p1 = wrk("p1")
    p1_rps = rps(p1)
    b, a = map(int, read("p1_cpu").split())
    p1_cpu = cpu_per_1000(b, a, p1["ok"])
    p1_ratio = p1_rps / pgb_tps
    rows.append(dict(
        id="P1", scenario="refresh, 10 000 connections, 32 callers",
        p50=ms(p1["p50_us"]), p99=ms(p1["p99_us"]), tput=f"{p1_rps:.0f} refreshes/s",
        base=f"pgbench same SQL: {pgb_tps:.0f} tps, p50 {pgb_p50:.1f} / p99 {pgb_p99:.1f} ms",
        ratio=f"{p1_ratio:.2f} × tps", target="≥ 0.8 ×", ok=p1_ratio >= 0.8 and p1["status5xx"] == 0,
        note=f"{p1['status5xx']} 5xx, {p1['status4xx']} 4xx; {p1_cpu:.2f} CPU s / 1 000 refreshes"))
    series += [("P1 refresh", ms(p1["p50_us"]), ms(p1["p99_us"])),
               ("P1 pgbench", pgb_p50, pgb_p99)]

    # P9 ---------------------------------------------------------------------------------
    if have("p9_replay.json"):
        keyed, replay = wrk("p9_keyed"), wrk("p9_replay")
        replay_rotations = int(read("p9_replay_rotations").strip() or 0)
        keyed_ratio = rps(keyed) / p1_rps
        replay_ratio = rps(replay) / p1_rps
        rows.append(dict(
            id="P9", scenario="refresh with an Idempotency-Key, then replays of it",
            p50=ms(replay["p50_us"]), p99=ms(replay["p99_us"]),
            tput=f"{rps(replay):.0f} replays/s; {rps(keyed):.0f} keyed refreshes/s",
            base=f"P1 refresh: {p1_rps:.0f}/s, p50 {ms(p1['p50_us']):.1f} / p99 {ms(p1['p99_us']):.1f} ms",
            ratio=f"replay {replay_ratio:.2f} ×, keyed refresh {keyed_ratio:.2f} × P1",
            target="a replay costs less than a rotation (> 1 ×)",
            ok=replay_ratio > 1 and replay["status5xx"] == 0 and replay_rotations == 0,
            note=f"{replay['status5xx']} 5xx, {replay['status4xx']} 4xx on replays; "
                 f"{replay_rotations} rotations during the replays; "
                 f"{cpu_per_1000(*cpu('p9_replay_cpu'), replay['ok']):.2f} CPU s / 1 000 replays, "
                 f"{cpu_per_1000(*cpu('p9_keyed_cpu'), keyed['ok']):.2f} / 1 000 keyed refreshes "
                 f"({p1_cpu:.2f} unkeyed)"))
        series += [("P9 replay", ms(replay["p50_us"]), ms(replay["p99_us"])),
                   ("P9 keyed refresh", ms(keyed["p50_us"]), ms(keyed["p99_us"]))]

    # P2 ---------------------------------------------------------------------------------
    p2b, p2m, p2h = wrk("p2_base"), wrk("p2_mixed"), wrk("p2_hot")
    gaps, refreshed, hot_versions = map(int, read("p2_versions").split("|"))
    p2_ratio = p2m["p99_us"] / p2b["p99_us"]
    fivexx = p2b["status5xx"] + p2m["status5xx"] + p2h["status5xx"]
    rows.append(dict(
        id="P2", scenario="8 callers beside 64 on one hot connection",
        p50=ms(p2m["p50_us"]), p99=ms(p2m["p99_us"]), tput=f"{rps(p2m):.0f}/s (8) + {rps(p2h):.0f}/s (hot)",
        base=f"the 8 alone: p50 {ms(p2b['p50_us']):.1f} / p99 {ms(p2b['p99_us']):.1f} ms, {rps(p2b):.0f}/s",
        ratio=f"{p2_ratio:.2f} × p99", target="≤ 2 × p99; no 5xx; gap-free",
        ok=p2_ratio <= 2 and fivexx == 0 and gaps == 0,
        note=f"{fivexx} 5xx; {gaps} of {refreshed} refreshed connections with version gaps; "
             f"hot connection: {hot_versions} versions, p99 {ms(p2h['p99_us']):.1f} ms; "
             f"{cpu_per_1000(*cpu('p2_base_cpu'), p2b['ok']):.2f} CPU s / 1 000 refreshes alone, "
             f"{cpu_per_1000(*cpu('p2_mixed_cpu'), p2m['ok'] + p2h['ok']):.2f} beside the hot client"))
    series += [("P2 8 callers + hot", ms(p2m["p50_us"]), ms(p2m["p99_us"])),
               ("P2 8 callers alone", ms(p2b["p50_us"]), ms(p2b["p99_us"])),
               ("P2 hot callers", ms(p2h["p50_us"]), ms(p2h["p99_us"]))]

    # P3 ---------------------------------------------------------------------------------
    p3, hello = wrk("p3_verify"), wrk("p3_hello")
    p3_ratio = rps(p3) / rps(hello)
    rows.append(dict(
        id="P3", scenario="verify, warm cache, 64 connections",
        p50=ms(p3["p50_us"]), p99=ms(p3["p99_us"]), tput=f"{rps(p3):.0f} req/s",
        base=f"actix-web hello-world: {rps(hello):.0f} req/s, p50 {ms(hello['p50_us']):.2f} / p99 {ms(hello['p99_us']):.2f} ms",
        ratio=f"{p3_ratio:.2f} × rps", target="≥ 0.75 ×", ok=p3_ratio >= 0.75 and p3["status4xx"] == 0,
        note=f"{p3['status4xx']} 4xx, {p3['status5xx']} 5xx; "
             f"{cpu_per_1000(*cpu('p3_cpu'), p3['ok']):.3f} CPU s / 1 000 verifies "
             f"(hello-world {cpu_per_1000(*cpu('p3_hello_cpu'), hello['ok']):.3f} per 1 000 requests)"))
    series += [("P3 verify", ms(p3["p50_us"]), ms(p3["p99_us"])),
               ("P3 hello-world", ms(hello["p50_us"]), ms(hello["p99_us"]))]

# P4 ---------------------------------------------------------------------------------
if have("p4"):
    idle, touched, after_idle, distinct, cb, ca = map(int, read("p4").split())
    p4 = wrk("p4")
    mib = lambda k: k / 1024
    p4_ok = mib(idle) <= 25 and after_idle <= 2 * idle
    rows.append(dict(
        id="P4", scenario=f"memory: refreshes touching {distinct} distinct clients",
        p50=ms(p4["p50_us"]), p99=ms(p4["p99_us"]), tput=f"{rps(p4):.0f} refreshes/s",
        base=f"idle RSS {mib(idle):.1f} MiB",
        ratio=f"{after_idle / idle:.2f} × idle 70 s after ({touched / idle:.2f} × when touched)",
        target="idle ≤ 25 MiB; ≤ 2 × idle 70 s after the load", ok=p4_ok,
        note=f"RSS idle {mib(idle):.1f} MiB, touched {mib(touched):.1f} MiB, 70 s after the load {mib(after_idle):.1f} MiB; "
             f"{cpu_per_1000(cb, ca, p4['ok']):.2f} CPU s / 1 000 refreshes"))

# P5 ---------------------------------------------------------------------------------
if have("p5_events.txt"):
    events = {}
    for line in read("p5_events.txt").splitlines():
        ident, at = line.split()
        events[ident] = float(at)
    accepted = {}
    for line in read("p5_sink.txt").splitlines():
        ident, at = line.split()
        ident = ident.split("@")[0]
        accepted.setdefault(ident, float(at))
    delays = sorted((accepted[e] - t) * 1000 for e, t in events.items() if e in accepted)
    delivered = len(delays)
    p5 = wrk("p5")
    b, a = map(int, read("p5_cpu").split())
    p5_p50, p5_p99 = pct(delays, 50), pct(delays, 99)
    rows.append(dict(
        id="P5", scenario="notices: ~200 refreshes/s for 30 s, 2 mithril-workers, SMTP sink",
        p50=p5_p50, p99=p5_p99, tput=f"{rps(p5):.0f} refreshes/s",
        base="—", ratio=f"{delivered}/{len(events)} delivered", target="commit → SMTP p99 ≤ 1 s; all delivered",
        ok=p5_p99 <= 1000 and delivered == len(events) and len(events) > 0,
        note=f"latency column is commit → SMTP accepted; refresh itself p50 {ms(p5['p50_us']):.1f} / "
             f"p99 {ms(p5['p99_us']):.1f} ms; {cpu_per_1000(b, a, p5['ok']):.2f} CPU s / 1 000 refreshes (API process)"))
    series += [("P5 commit → SMTP", p5_p50, p5_p99)]

# P6 ---------------------------------------------------------------------------------
if have("p6_up.json") and have("p6_down.json"):
    up, down = wrk("p6_up"), wrk("p6_down")
    ratio = down["p99_us"] / max(up["p99_us"], 1)
    rows.append(dict(
        id="P6", scenario="verify, first touches, Redis stopped",
        p50=ms(down["p50_us"]), p99=ms(down["p99_us"]), tput=f"{rps(down):.0f} req/s",
        base=f"Redis up: p50 {ms(up['p50_us']):.1f} / p99 {ms(up['p99_us']):.1f} ms, {rps(up):.0f} req/s",
        ratio=f"{ratio:.2f} × p99", target="≤ 2 × p99",
        ok=ratio <= 2 and down["status5xx"] == 0 and down["ok"] > 0,
        note=f"16 callers, 20 s each, secrets of 10 000 clients per phase; {down['status5xx']} 5xx, "
             f"{down['status4xx']} 4xx with Redis stopped"))

# P7 ---------------------------------------------------------------------------------
def soak(label):
    """The RSS samples (KiB) of one soak: under load by second, then after it."""
    under, after = [], []
    for line in read(f"p7_{label}").splitlines():
        t, kib = line.split()
        (after if t.startswith("+") else under).append((t, int(kib)))
    return under, after


soaks = {}
for label in ("baseline", "current"):
    if have(f"p7_{label}"):
        soaks[label] = soak(label)
if "current" in soaks:
    under, after = soaks["current"]
    idle = under[0][1]
    at60 = dict(under).get("60", idle)
    last = under[-1][1]
    settled = after[-1][1]
    ref, ver = wrk("p7_refresh_current"), wrk("p7_verify_current")
    curve = " → ".join(f"{kib / 1024:.0f}" for _, kib in under + after)
    base = "—"
    if "baseline" in soaks:
        b_under, b_after = soaks["baseline"]
        base = ("the baseline build: " + " → ".join(f"{kib / 1024:.0f}" for _, kib in b_under + b_after)
                + f" MiB, last {b_under[-1][1] / dict(b_under).get('60', b_under[0][1]):.2f} × its 60 s sample")
    rows.append(dict(
        id="P7", scenario=f"soak: {under[-1][0]} s of refreshes + verifies, nobody scraping /metrics",
        p50=ms(ver["p50_us"]), p99=ms(ver["p99_us"]),
        tput=f"{rps(ref):.0f} refreshes/s + {rps(ver):.0f} verifies/s", base=base,
        ratio=f"last {last / at60:.2f} × the 60 s sample; {settled / idle:.2f} × idle 60 s after",
        target="last ≤ 1.2 × 60 s sample; ≤ 2 × idle after", ok=last <= 1.2 * at60 and settled <= 2 * idle,
        note=f"API RSS MiB every 30 s under load, then 30 s and 60 s after: {curve}; latency columns are the verifies'; "
             f"{ref['status5xx'] + ver['status5xx']} 5xx"))

# P8 ---------------------------------------------------------------------------------
if have("p8"):
    state = {}
    cached = {}
    for line in read("p8").splitlines():
        label, memory, keys, credentials = line.split()
        state[label] = (int(memory), int(keys))
        cached[label] = int(credentials)
    rotations, mails = map(int, read("p8_counts").split())
    p8 = wrk("p8")
    (m0, k0), (m1, k1), (m2, k2) = state["before"], state["after_load"], state["after_retention"]
    mib = lambda b: b / 1024 / 1024
    rows.append(dict(
        id="P8", scenario=f"Redis after {rotations} rotations and the retention (60 s)",
        p50=ms(p8["p50_us"]), p99=ms(p8["p99_us"]), tput=f"{rps(p8):.0f} refreshes/s",
        base=f"before: {mib(m0):.1f} MiB used, {k0} queue keys",
        ratio=f"right after {mib(m1):.1f} MiB, {k1} queue keys; after the retention {mib(m2):.1f} MiB, {k2} queue keys",
        target="back near the start, not growing with the rotations",
        ok=k2 <= k0 + 20 and mails >= rotations,
        note=f"{mails} mails for {rotations} rotations; Redis used_memory and the namespace's queue keys "
             f"before, right after the notices went, and 75 s later (retention 60 s, pruner every 6 s); "
             f"cached credentials apart, which leave by their own TTL (ten minutes for a retirement): "
             f"{cached['before']}, {cached['after_load']}, {cached['after_retention']}"))

# BENCHMARKS.md ----------------------------------------------------------------------
start, end = map(int, read("run_time").split())
seed_a, seed_b = map(float, read("seed_time").split())
when = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "# Benchmarks",
    "",
    f"Written by `scripts/bench` on {when}: {cores} cores, shared with other work, so every",
    "figure stands beside a baseline measured in the same run. Run it again with",
    "`scripts/bench` (about 10 minutes; see the script's header for its settings).",
    "",
    f"Run time {end - start} s (build included); {read('seeded').strip()} clients seeded in {seed_b - seed_a:.1f} s;",
    f"`synchronous_commit` = {read('synchronous_commit').strip()} for the service and pgbench alike.",
    "",
    "| id | scenario | p50 ms | p99 ms | throughput | baseline (same run) | ratio | target | result |",
    "|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    lines.append(
        f"| {r['id']} | {r['scenario']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['tput']} | {r['base']} | "
        f"{r['ratio']} | {r['target']} | {'pass' if r['ok'] else '**FAIL**'} |")
lines += ["", "Notes per scenario:", ""]
for r in rows:
    lines.append(f"- **{r['id']}**: {r['note']}.")
lines += ["", "![p50 and p99 latency per scenario](bench/latency.svg)", ""]
captured = [l for l in read("captured-refresh.log").splitlines() if "DETAIL" not in l] if have("captured-refresh.log") else []
statements = [re.sub(r"^.*?(statement|execute [^:]*): ", "", l) for l in captured]
lines += [
    "## The refresh's SQL, captured from PostgreSQL's log",
    "",
    "One refresh on a fresh instance with `log_statement = 'all'` on the bench database",
    "(the pgbench baseline, `bench/refresh.pgbench`, runs the transaction part of it):",
    "",
    "```sql",
    *statements,
    "```",
    "",
]
notes = os.path.join(here, "notes.md")
if os.path.exists(notes):
    with open(notes) as f:
        lines += [f.read()]
with open(out_md, "w") as f:
    f.write("\n".join(lines).rstrip() + "\n")

# SVG: p50 and p99 per series, log scale -----------------------------------------------
import math

if not series:
    series = [(r["id"], r["p50"], r["p99"]) for r in rows]

width, left, bar_h, gap = 860, 190, 12, 12
height = 60 + len(series) * (2 * bar_h + gap) + 40
values = [v for _, a, b in series for v in (a, b) if v == v and v > 0]
lo = 10 ** math.floor(math.log10(min(values)))
hi = 10 ** math.ceil(math.log10(max(values)))
span = math.log10(hi) - math.log10(lo)
plot_w = width - left - 30


def x(v):
    v = max(v, lo)
    return left + (math.log10(v) - math.log10(lo)) / span * plot_w


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
       f'font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       f'<text x="{left}" y="20" font-size="14">Latency per scenario (ms, log scale): '
       f'p50 dark, p99 light — {when}</text>']
decade = lo
while decade <= hi * 1.0001:
    xx = x(decade)
    svg.append(f'<line x1="{xx:.1f}" y1="30" x2="{xx:.1f}" y2="{height - 30}" stroke="#ddd"/>')
    svg.append(f'<text x="{xx:.1f}" y="{height - 12}" text-anchor="middle">{decade:g}</text>')
    decade *= 10
y = 40
for label, p50, p99 in series:
    svg.append(f'<text x="{left - 8}" y="{y + bar_h + 4}" text-anchor="end">{label}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{x(p50) - left:.1f}" height="{bar_h}" fill="#2b6cb0"/>')
    svg.append(f'<text x="{x(p50) + 4:.1f}" y="{y + 10}">{p50:.2f}</text>')
    svg.append(f'<rect x="{left}" y="{y + bar_h}" width="{x(p99) - left:.1f}" height="{bar_h}" fill="#90cdf4"/>')
    svg.append(f'<text x="{x(p99) + 4:.1f}" y="{y + bar_h + 10}">{p99:.2f}</text>')
    y += 2 * bar_h + gap
svg.append("</svg>")
with open(out_svg, "w") as f:
    f.write("\n".join(svg) + "\n")

for r in rows:
    print(f"{r['id']}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['tput']}; {r['ratio']} "
          f"(target {r['target']}): {'pass' if r['ok'] else 'FAIL'}")
