#!/usr/bin/env python3
"""Prints the criterion medians of the last `cargo bench` run as Markdown.

    python3 benches/medians.py [GROUP_PREFIX...]

Reads <target>/criterion/<group>/<bench>/new/estimates.json (target is
$CARGO_TARGET_DIR or ./target). Criterion's console "time:" line is the
mean/slope estimate; the issues' goals are stated as medians, hence this.
"""
import json
import os
import sys

target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
root = os.path.join(target, "criterion")
prefixes = sys.argv[1:]


def human(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


rows = []
for dirpath, dirnames, filenames in os.walk(root):
    if os.path.basename(dirpath) == "new" and "estimates.json" in filenames:
        name = os.path.relpath(os.path.dirname(dirpath), root)
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        est = json.load(open(os.path.join(dirpath, "estimates.json")))
        m = est["median"]
        rows.append((name, m["point_estimate"], m["confidence_interval"]["lower_bound"],
                     m["confidence_interval"]["upper_bound"]))
if not rows:
    sys.exit(f"no criterion results under {root}")
print("| benchmark | median | 95% CI of median |")
print("|---|---:|---|")
for name, m, lo, hi in sorted(rows):
    print(f"| {name} | {human(m)} | {human(lo)} – {human(hi)} |")
