#!/usr/bin/env python3
"""Plot `thaw bench working-set` output as an SVG bar chart (no dependencies).

Usage: thaw bench working-set ... > out.txt; scripts/plot_working_set.py out.txt docs/working-set.svg

One panel per tier (local disk, slow tier); per function, the median first
response of eager, lazy and lazy + working set with the page cache dropped,
and a line at the lazy + working set restore whose pages were in memory.
"""
import re
import sys

ROW = re.compile(r"^\s+(?P<tier>.+?): (?P<mode>eager|lazy|lazy\+ws), (?P<cache>cold cache|pages in memory)\s+(?P<median>[\d.]+)")
FUNC = re.compile(r"^(?P<name>[a-z0-9-]+): snapshot")
COLORS = {"eager": "#8c8c8c", "lazy": "#e0a030", "lazy+ws": "#2f7fc1"}


def parse(path):
    data = {}  # tier -> function -> {(mode, cache): median}
    func = None
    for line in open(path, encoding="utf-8"):
        m = FUNC.match(line)
        if m:
            func = m["name"]
            continue
        m = ROW.match(line)
        if m and func:
            tier = m["tier"].strip()
            data.setdefault(tier, {}).setdefault(func, {})[(m["mode"], m["cache"])] = float(m["median"])
    return data


def svg(data):
    tiers = list(data)
    funcs = list(next(iter(data.values())))
    bar, gap, group_gap = 14, 2, 22
    group_w = 3 * (bar + gap) + group_gap
    panel_w = 60 + group_w * len(funcs)
    panel_h = 260
    width, height = max(panel_w, 720), 40 + panel_h * len(tiers) + 40
    top = max(v for t in data.values() for f in t.values() for v in f.values())
    scale = (panel_h - 70) / top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="20" font-size="13">First response of a restored instance, median ms, page cache dropped (line: lazy+ws with pages in memory)</text>',
    ]
    for ti, tier in enumerate(tiers):
        y0 = 40 + ti * panel_h
        base = y0 + panel_h - 40
        out.append(f'<text x="10" y="{y0 + 14}" font-size="12" font-weight="bold">{tier}</text>')
        out.append(f'<line x1="50" y1="{base}" x2="{panel_w - 5}" y2="{base}" stroke="black"/>')
        for tick in range(0, int(top) + 1, 50):
            y = base - tick * scale
            out.append(f'<line x1="46" y1="{y:.1f}" x2="50" y2="{y:.1f}" stroke="black"/>')
            out.append(f'<text x="42" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
        for fi, func in enumerate(funcs):
            x = 60 + fi * group_w
            values = data[tier].get(func, {})
            for mi, mode in enumerate(["eager", "lazy", "lazy+ws"]):
                v = values.get((mode, "cold cache"))
                if v is None:
                    continue
                bx = x + mi * (bar + gap)
                out.append(
                    f'<rect x="{bx}" y="{base - v * scale:.1f}" width="{bar}" height="{v * scale:.1f}" fill="{COLORS[mode]}"><title>{func} {mode}: {v} ms</title></rect>'
                )
            ref = data[tiers[0]].get(func, {}).get(("lazy+ws", "pages in memory"))
            if ref is not None:
                y = base - ref * scale
                out.append(f'<line x1="{x - 2}" y1="{y:.1f}" x2="{x + 3 * (bar + gap)}" y2="{y:.1f}" stroke="black" stroke-dasharray="3,2"/>')
            out.append(f'<text x="{x + 24}" y="{base + 14}" text-anchor="middle">{func.replace("python-", "py-")}</text>')
    ly = height - 16
    for i, mode in enumerate(["eager", "lazy", "lazy+ws"]):
        lx = 60 + i * 110
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[mode]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{mode}, cold cache</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(svg(parse(sys.argv[1])))
