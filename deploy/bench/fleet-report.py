#!/usr/bin/env python3
"""Cuts the results of deploy/bench/fleet.sh into phases: prints a table and writes
fleet.json. Input (in the directory given): marks.jsonl (phase boundaries with /proc
samples), timeline-*.jsonl (what every simulator's envoys saw, per second), enroll-*.log,
sim-*.json, failover.txt."""

import glob
import json
import math
import os
import re
import sys

BUCKET_RATIO = 1.05  # vigo-sim's latency buckets (envoy/src/sim/stats.rs)


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def percentile(buckets, q):
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for b in sorted(buckets):
        seen += buckets[b]
        if seen >= rank:
            return round(BUCKET_RATIO ** (b + 1))  # upper edge of the bucket, µs
    return None


def window(periods, start, end):
    w = {"ok": 0, "bundles": 0, "reports": 0, "shed": 0, "retried": {}, "failed": {}, "buckets": {}}
    last_trouble = None
    for p in periods:
        if not (start < p["at_ms"] <= end):
            continue
        for k in ("ok", "bundles", "reports", "shed"):
            w[k] += p[k]
        for k in ("retried", "failed"):
            for status, n in p[k].items():
                w[k][status] = w[k].get(status, 0) + n
        if p["retried"] or p["failed"]:
            last_trouble = max(last_trouble or 0, p["at_ms"])
        for b, n in p["latency_buckets"].items():
            w["buckets"][int(b)] = w["buckets"].get(int(b), 0) + n
    w["last_trouble_ms"] = last_trouble
    return w


def cpu_delta(a, b):
    """CPU used between two samples of the same role; a restarted process counts from 0."""
    return sum(y["cpu_us"] - (x["cpu_us"] if x["pid"] == y["pid"] else 0) for x, y in zip(a, b))


def main(out):
    marks = {m["name"]: m for m in load_jsonl(os.path.join(out, "marks.jsonl"))}
    periods = []
    for path in sorted(glob.glob(os.path.join(out, "timeline-*.jsonl"))):
        periods += load_jsonl(path)
    envoys = 0
    for path in glob.glob(os.path.join(out, "sim-*.json")):
        try:
            with open(path) as f:
                envoys += json.load(f)["envoys"]
        except (ValueError, KeyError):
            pass
    report = {"envoys": envoys, "spokes": len(marks["enroll"]["spokes"]), "phases": {}}

    e0, e1 = marks["enroll"], marks["enroll-end"]
    secs = (e1["at_ms"] - e0["at_ms"]) / 1000
    enrolled = 0
    for path in glob.glob(os.path.join(out, "enroll-*.log")):
        m = re.search(r"enrolled (\d+) envoys", open(path).read())
        enrolled += int(m.group(1)) if m else 0
    sim_cpu = 0.0
    for path in glob.glob(os.path.join(out, "enroll-*.cpu")):
        m = re.search(r"cpu ([\d.]+) ([\d.]+)", open(path).read())
        sim_cpu += float(m.group(1)) + float(m.group(2)) if m else 0.0
    report["phases"]["enroll"] = {
        "seconds": secs,
        "enrolled": enrolled,
        "per_second": round(enrolled / secs, 1) if secs else None,
        "hub_cpu_us_per_enrollment": round(cpu_delta(e0["hubs"], e1["hubs"]) / max(enrolled, 1), 1),
        "spoke_cpu_us_per_enrollment": round(cpu_delta(e0["spokes"], e1["spokes"]) / max(enrolled, 1), 1),
        "sim_cpu_us_per_enrollment": round(sim_cpu * 1e6 / max(enrolled, 1), 1),
    }

    steady_rate = None
    for name in ("ramp", "steady", "storm", "reconnect", "failover"):
        if name not in marks or f"{name}-end" not in marks:
            continue
        a, b = marks[name], marks[f"{name}-end"]
        secs = (b["at_ms"] - a["at_ms"]) / 1000
        w = window(periods, a["at_ms"], b["at_ms"])
        spoke_cpu = cpu_delta(a["spokes"], b["spokes"])
        hub_cpu = cpu_delta(a["hubs"], b["hubs"])
        ok = w["ok"]
        phase = {
            "seconds": round(secs, 1),
            "checkins": ok,
            "checkins_per_second": round(ok / secs, 1),
            "bundles": w["bundles"],
            "reports": w["reports"],
            "p50_us": percentile(w["buckets"], 0.50),
            "p99_us": percentile(w["buckets"], 0.99),
            "p999_us": percentile(w["buckets"], 0.999),
            "failed": w["failed"],
            "failed_total": sum(w["failed"].values()),
            "retried": w["retried"],
            "retried_total": sum(w["retried"].values()),
            "shed": w["shed"],
            "spoke_cpu_percent": round(spoke_cpu / secs / 1e4, 1),
            "spoke_cpu_us_per_checkin": round(spoke_cpu / ok, 1) if ok else None,
            "hub_cpu_percent": round(hub_cpu / secs / 1e4, 1),
            "hub_cpu_us_per_checkin": round(hub_cpu / ok, 1) if ok else None,
            "spoke_rss_kib": [s["rss_kib"] for s in b["spokes"]],
            "spoke_rss_per_envoy_bytes": round(sum(s["rss_kib"] for s in b["spokes"]) * 1024 / max(envoys, 1)),
            "term_changes": sum(1 for x, y in zip(a["terms"], b["terms"]) if x is not None and y is not None and y != x),
        }
        if name == "steady":
            steady_rate = spoke_cpu / secs
        if name == "storm" and steady_rate is not None and w["bundles"]:
            phase["spoke_cpu_us_extra_per_bundle_and_report"] = round((spoke_cpu - steady_rate * secs) / w["bundles"], 1)
        if name == "reconnect":
            phase["restarted_spoke_cpu_us"] = b["spokes"][0]["cpu_us"]
            if w["last_trouble_ms"]:
                phase["all_back_after_s"] = round((w["last_trouble_ms"] - a["at_ms"]) / 1000, 1)
        report["phases"][name] = phase

    failover = os.path.join(out, "failover.txt")
    if os.path.exists(failover):
        text = open(failover).read()
        fo = report["phases"].setdefault("failover", {})
        for key in ("elected_ms", "commit_ms"):
            m = re.search(key + r"=(\d+)", text)
            fo[key] = int(m.group(1)) if m else None

    with open(os.path.join(out, "fleet.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"fleet: {report['envoys']} envoys on {report['spokes']} spokes")
    en = report["phases"]["enroll"]
    print(f"enroll: {en['enrolled']} in {en['seconds']:.1f} s = {en['per_second']}/s; "
          f"hub CPU {en['hub_cpu_us_per_enrollment']} µs, spoke CPU {en['spoke_cpu_us_per_enrollment']} µs, "
          f"simulator CPU {en['sim_cpu_us_per_enrollment']} µs per enrollment")
    print(f"{'phase':<10} {'secs':>6} {'ck-in/s':>8} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'failed':>7} "
          f"{'retried':>8} {'spoke %':>8} {'µs/ck-in':>9} {'hub %':>6} {'hub µs':>7} {'RSS B/envoy':>11} {'terms':>5}")
    for name, p in report["phases"].items():
        if name == "enroll" or "checkins" not in p:
            continue
        print(f"{name:<10} {p['seconds']:>6} {p['checkins_per_second']:>8} {p['p50_us']!s:>8} {p['p99_us']!s:>8} "
              f"{p['p999_us']!s:>9} {p['failed_total']:>7} {p['retried_total']:>8} {p['spoke_cpu_percent']:>8} "
              f"{p['spoke_cpu_us_per_checkin']!s:>9} {p['hub_cpu_percent']:>6} {p['hub_cpu_us_per_checkin']!s:>7} "
              f"{p['spoke_rss_per_envoy_bytes']:>11} {p['term_changes']:>5}")
        if p["failed"]:
            print(f"           failed: {p['failed']}")
        if p["retried"]:
            print(f"           retried: {p['retried']}")
    st = report["phases"].get("storm", {})
    if "spoke_cpu_us_extra_per_bundle_and_report" in st:
        print(f"storm: {st['bundles']} bundles, {st['reports']} reports; "
              f"{st['spoke_cpu_us_extra_per_bundle_and_report']} µs spoke CPU per delivery + report beyond steady")
    rc = report["phases"].get("reconnect", {})
    if rc:
        print(f"reconnect: restarted spoke used {rc.get('restarted_spoke_cpu_us', 0) / 1e6:.2f} s CPU in the window; "
              f"last retry or failure {rc.get('all_back_after_s', 0)} s after the kill")
    fo = report["phases"].get("failover", {})
    if "commit_ms" in fo:
        print(f"failover: leader killed -> a survivor led after {fo['elected_ms']} ms, "
              f"committed a write after {fo['commit_ms']} ms")


if __name__ == "__main__":
    main(sys.argv[1])
