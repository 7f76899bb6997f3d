"""Small PNG writers on Pillow alone (a dependency already): a token heatmap (paper Fig. 5 style) and a line chart
with confidence bands. No matplotlib needed, so the benchmarks run from a fresh install."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0])


@dataclass
class HeatmapRow:
    """One line of tokens: ``values`` in [-1, 1] colour them (green > 0, red < 0, white 0)."""

    label: str
    tokens: Sequence[str]
    values: Sequence[float]
    underline: set[int] = field(default_factory=set)  # e.g. decisive tokens
    boxed: set[int] = field(default_factory=set)  # e.g. the first error
    note: str = ""


def _colour(value: float) -> tuple[int, int, int]:
    v = max(-1.0, min(1.0, float(value)))
    if v >= 0:
        return (int(255 - 155 * v), 255, int(255 - 155 * v))
    return (255, int(255 + 155 * v), int(255 + 155 * v))


def token_heatmap(rows: Sequence[HeatmapRow], path: Path, title: str, legend: str) -> Path:
    """Draw ``rows`` of coloured token boxes (one row per method / response) and save a PNG."""
    font, small, big = _font(15), _font(12), _font(17)
    scratch = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    label_width = max(_text_width(scratch, r.label, font) for r in rows) + 20
    widths = []
    for row in rows:
        widths.append(sum(max(12, _text_width(scratch, _show(t), font) + 6) for t in row.tokens)
                      + _text_width(scratch, row.note, small) + 20)
    width = max(900, label_width + max(widths) + 30, _text_width(scratch, legend, small) + 30)
    line_height = 44
    height = 70 + line_height * len(rows) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((15, 12), title, fill="black", font=big)
    y = 50
    for row in rows:
        draw.text((10, y + 8), row.label, fill="black", font=font)
        x = label_width
        for i, (token, value) in enumerate(zip(row.tokens, row.values, strict=True)):
            shown = _show(token)
            w = max(12, _text_width(draw, shown, font) + 6)
            draw.rectangle([x, y, x + w - 1, y + 30], fill=_colour(value))
            draw.text((x + 3, y + 6), shown, fill="black", font=font)
            if i in row.underline:
                draw.line([x + 2, y + 33, x + w - 3, y + 33], fill="black", width=2)
            if i in row.boxed:
                draw.rectangle([x, y, x + w - 1, y + 30], outline="black", width=2)
            x += w
        if row.note:
            draw.text((x + 10, y + 9), row.note, fill=(90, 90, 90), font=small)
        y += line_height
    draw.text((15, y + 5), legend, fill=(60, 60, 60), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _show(token: str) -> str:
    return " " if token == " " else token.replace("\n", "\\n")


@dataclass
class Series:
    """One curve: ``y`` over ``x`` with an optional band ``[low, high]``."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    dashed: bool = False


def line_chart(series: Sequence[Series], path: Path, title: str, xlabel: str, ylabel: str,
               hline: float | None = None, hline_label: str = "") -> Path:
    """A line chart with shaded bands and a legend, saved as PNG."""
    width, height = 900, 580
    left, right, top, bottom = 80, 200, 70, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    font, small, big = _font(14), _font(12), _font(16)
    xs = [v for s in series for v in s.x]
    ys = [v for s in series for v in (list(s.y) + list(s.low or []) + list(s.high or [])) if math.isfinite(v)]
    if hline is not None:
        ys.append(hline)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / ((x1 - x0) or 1.0) * plot_w, top + (1 - (y - y0) / ((y1 - y0) or 1.0)) * plot_h)

    draw.text((left, 10), title, fill="black", font=big)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for k in range(6):
        yv = y0 + (y1 - y0) * k / 5
        _, yy = px(x0, yv)
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.line([left, yy, left + plot_w, yy], fill=(230, 230, 230))
        draw.text((left - 60, yy - 7), f"{yv:.3f}", fill="black", font=small)
    for k in range(6):
        xv = x0 + (x1 - x0) * k / 5
        xx, _ = px(xv, y0)
        draw.line([xx, top + plot_h, xx, top + plot_h + 4], fill="black")
        draw.text((xx - 10, top + plot_h + 8), f"{xv:g}", fill="black", font=small)
    draw.text((left + plot_w / 2 - 40, height - 30), xlabel, fill="black", font=font)
    draw.text((10, top - 25), ylabel, fill="black", font=font)
    if hline is not None:
        _, yy = px(x0, hline)
        for xx in range(left, left + plot_w, 12):
            draw.line([xx, yy, min(xx + 6, left + plot_w), yy], fill=(80, 80, 80), width=1)
        draw.text((left + plot_w - _text_width(draw, hline_label, small) - 6, yy + 3), hline_label, fill=(80, 80, 80),
                  font=small)
    for i, s in enumerate(series):  # bands first, so that no band covers a line
        colour = PALETTE[i % len(PALETTE)]
        if s.low is not None and s.high is not None and len(s.x) > 1:
            upper = [px(x, h) for x, h in zip(s.x, s.high, strict=True)]
            lower = [px(x, lo) for x, lo in zip(s.x, s.low, strict=True)][::-1]
            draw.polygon(upper + lower, fill=(*colour, 28))
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = [px(x, y) for x, y in zip(s.x, s.y, strict=True)]
        if s.dashed:
            for a, b in itertools.pairwise(points):
                length = math.hypot(b[0] - a[0], b[1] - a[1])
                pieces = max(1, int(length // 8))
                for k in range(0, pieces, 2):
                    f0, f1 = k / pieces, min(1.0, (k + 1) / pieces)
                    draw.line([(a[0] + f0 * (b[0] - a[0]), a[1] + f0 * (b[1] - a[1])),
                               (a[0] + f1 * (b[0] - a[0]), a[1] + f1 * (b[1] - a[1]))], fill=colour, width=3)
        else:
            draw.line(points, fill=colour, width=3)
        for p in points:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        ly = top + 10 + 24 * i
        draw.line([left + plot_w + 15, ly + 7, left + plot_w + 40, ly + 7], fill=colour, width=3)
        draw.text((left + plot_w + 46, ly), s.name, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
