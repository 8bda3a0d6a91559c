#!/usr/bin/env python3
"""Plot `thaw bench burst` output as an SVG bar chart (no dependencies).

Usage: thaw bench burst ... > out.txt; scripts/plot_burst.py out.txt docs/burst.svg

Per function, one pair of bars per configuration: p50 (light) and p99
(dark) of the client-side latency of the burst's requests.
"""
import re
import sys

ROW = re.compile(
    r"^(?P<func>[a-z0-9-]+)\s+(?P<config>.+?)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<wall>[\d.]+)\s+\d+\s+\d+"
)
COLORS = ["#8c8c8c", "#e0a030", "#2f7fc1", "#3a9a4a", "#b05fb0", "#555555"]


def parse(path):
    data = {}  # function -> [(config, p50, p99)]
    for line in open(path, encoding="utf-8"):
        m = ROW.match(line)
        if m and m["func"] != "function":
            data.setdefault(m["func"], []).append((m["config"].strip(), float(m["p50"]), float(m["p99"])))
    return data


def svg(data):
    funcs = list(data)
    configs = []
    for rows in data.values():
        for c, _, _ in rows:
            if c not in configs:
                configs.append(c)
    bar, group_gap = 12, 26
    group_w = len(configs) * 2 * bar + group_gap
    width = max(60 + group_w * len(funcs), 720)
    height = 360
    base = height - 70
    top = max(p99 for rows in data.values() for _, _, p99 in rows)
    scale = (base - 50) / top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="20" font-size="13">Burst of concurrent first requests from zero instances: p50 (light) and p99 (dark), ms</text>',
        f'<line x1="50" y1="{base}" x2="{width - 5}" y2="{base}" stroke="black"/>',
    ]
    step = 100 if top > 400 else 50
    for tick in range(0, int(top) + 1, step):
        y = base - tick * scale
        out.append(f'<line x1="46" y1="{y:.1f}" x2="50" y2="{y:.1f}" stroke="black"/>')
        out.append(f'<text x="42" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for fi, func in enumerate(funcs):
        x0 = 60 + fi * group_w
        for config, p50, p99 in data[func]:
            ci = configs.index(config)
            x = x0 + ci * 2 * bar
            color = COLORS[ci % len(COLORS)]
            for j, (v, opacity) in enumerate([(p50, 0.45), (p99, 1.0)]):
                h = v * scale
                out.append(
                    f'<rect x="{x + j * bar}" y="{base - h:.1f}" width="{bar - 1}" height="{h:.1f}" fill="{color}" fill-opacity="{opacity}"/>'
                )
        out.append(f'<text x="{x0}" y="{base + 16}">{func}</text>')
    lx = 60
    for ci, config in enumerate(configs):
        out.append(f'<rect x="{lx}" y="{height - 30}" width="10" height="10" fill="{COLORS[ci % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 14}" y="{height - 21}">{config}</text>')
        lx += 14 + 7 * len(config) + 16
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(svg(parse(sys.argv[1])))
