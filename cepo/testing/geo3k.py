"""A synthetic, Geometry3K-shaped dataset with real, checkable answers, built offline.

The hub dataset ``hiyouga/geometry3k`` has three columns: ``images`` (a list holding one PIL image),
``problem`` (a string starting with ``"<image>"``, e.g. ``"<image>Find x."``) and ``answer`` (a string such
as ``"12"``).  :func:`make_geo3k_like` returns a :class:`datasets.Dataset` with exactly those columns and
feature types; each row is a small figure drawn with PIL whose labelled numbers determine the answer:

* ``hypotenuse``: right triangle, legs labelled, hypotenuse ``x`` -> ``"<image>Find x."``, answer ``c``;
* ``leg``: right triangle, one leg and the hypotenuse labelled, other leg ``x`` -> answer that leg;
* ``rect_area`` / ``rect_perimeter``: rectangle with both sides labelled -> area / perimeter;
* ``angle``: triangle with two interior angles labelled in degrees, third ``x°`` -> ``180 - a - b``.

Right triangles use multiples of the Pythagorean triples (3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), so
every answer is an integer written as a plain decimal string.  Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "GEO3K_FEATURES",
    "GEO3K_KINDS",
    "Geo3kProblem",
    "make_geo3k_like",
    "render_problem",
    "sample_geo3k_problems",
    "write_geo3k_parquet",
]

#: Column types of ``hiyouga/geometry3k`` (``images`` is a list of images, one per row).
GEO3K_FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }
)

#: Problem kinds, in the order rows cycle through them.
GEO3K_KINDS: tuple[str, ...] = ("hypotenuse", "leg", "rect_area", "rect_perimeter", "angle")

_TRIPLES: tuple[tuple[int, int, int], ...] = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25))

Point = tuple[float, float]


@dataclass(frozen=True)
class Geo3kProblem:
    """One synthetic problem: what is drawn, the question and its answer.

    Attributes:
        kind: one of :data:`GEO3K_KINDS`.
        values: the numbers drawn in the figure, by name (``a``/``b``/``c`` sides of a right triangle with
            ``c`` the hypotenuse, ``w``/``h`` for rectangles, ``alpha``/``beta`` angles in degrees).
        problem: question text, starting with ``"<image>"``.
        answer: the answer as a decimal integer string.
        vertices: polygon in abstract coordinates (y up), fitted into the image when rendering.
        edge_labels: ``(edge index, text)``; edge ``i`` joins ``vertices[i]`` and ``vertices[i + 1]``.
        vertex_labels: ``(vertex index, text)`` drawn just outside the polygon at that vertex (angles).
        right_angle_at: index of a vertex to mark with a right-angle square, if any.
    """

    kind: str
    values: dict[str, int]
    problem: str
    answer: str
    vertices: tuple[Point, ...]
    edge_labels: tuple[tuple[int, str], ...] = ()
    vertex_labels: tuple[tuple[int, str], ...] = ()
    right_angle_at: int | None = None


def _right_triangle(rng: random.Random, solve_for: str) -> Geo3kProblem:
    p, q, r = rng.choice(_TRIPLES)
    k = rng.randint(1, 3)
    a, b, c = k * p, k * q, k * r
    if rng.random() < 0.5:
        a, b = b, a
    # Right angle at vertex 0; edge 0 = vertical leg a, edge 1 = hypotenuse, edge 2 = horizontal leg b.
    vertices = ((0.0, 0.0), (0.0, float(a)), (float(b), 0.0))
    if solve_for == "c":
        labels = ((0, str(a)), (1, "x"), (2, str(b)))
        answer = c
    else:
        labels = ((0, str(a)), (1, str(c)), (2, "x"))
        answer = b
    return Geo3kProblem(
        kind="hypotenuse" if solve_for == "c" else "leg",
        values={"a": a, "b": b, "c": c},
        problem="<image>Find x.",
        answer=str(answer),
        vertices=vertices,
        edge_labels=labels,
        right_angle_at=0,
    )


def _rectangle(rng: random.Random, quantity: str) -> Geo3kProblem:
    w, h = rng.randint(3, 12), rng.randint(3, 12)
    vertices = ((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h)))
    if quantity == "area":
        problem, answer, kind = "<image>Find the area of the rectangle.", w * h, "rect_area"
    else:
        problem, answer, kind = "<image>Find the perimeter of the rectangle.", 2 * (w + h), "rect_perimeter"
    return Geo3kProblem(
        kind=kind,
        values={"w": w, "h": h},
        problem=problem,
        answer=str(answer),
        vertices=vertices,
        edge_labels=((0, str(w)), (3, str(h))),
    )


def _angle_triangle(rng: random.Random) -> Geo3kProblem:
    alpha = 5 * rng.randint(6, 16)  # 30..80 degrees
    beta = 5 * rng.randint(6, 16)
    if alpha + beta > 150:
        beta = 150 - alpha
    gamma = 180 - alpha - beta
    ta, tb = math.tan(math.radians(alpha)), math.tan(math.radians(beta))
    apex_x = tb / (ta + tb)
    vertices = ((0.0, 0.0), (1.0, 0.0), (apex_x, apex_x * ta))
    return Geo3kProblem(
        kind="angle",
        values={"alpha": alpha, "beta": beta, "gamma": gamma},
        problem="<image>Find x.",
        answer=str(gamma),
        vertices=vertices,
        vertex_labels=((0, f"{alpha}°"), (1, f"{beta}°"), (2, "x°")),
    )


def sample_geo3k_problems(n: int = 16, seed: int = 0) -> list[Geo3kProblem]:
    """Draw ``n`` problem specs (no images); rows cycle through :data:`GEO3K_KINDS` from a seeded offset."""
    rng = random.Random(seed)
    offset = rng.randrange(len(GEO3K_KINDS))
    problems: list[Geo3kProblem] = []
    for i in range(n):
        kind = GEO3K_KINDS[(i + offset) % len(GEO3K_KINDS)]
        if kind == "hypotenuse":
            problems.append(_right_triangle(rng, "c"))
        elif kind == "leg":
            problems.append(_right_triangle(rng, "b"))
        elif kind == "rect_area":
            problems.append(_rectangle(rng, "area"))
        elif kind == "rect_perimeter":
            problems.append(_rectangle(rng, "perimeter"))
        else:
            problems.append(_angle_triangle(rng))
    return problems


def _fit(vertices: Sequence[Point], size: int, margin: float) -> list[Point]:
    """Scale/translate abstract (y-up) vertices into the ``[margin, size - margin]`` box, y flipped."""
    xs, ys = [v[0] for v in vertices], [v[1] for v in vertices]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    box = size - 2 * margin
    scale = box / max(span_x, span_y, 1e-9)
    off_x = margin + (box - span_x * scale) / 2
    off_y = margin + (box - span_y * scale) / 2
    return [(off_x + (x - min(xs)) * scale, size - (off_y + (y - min(ys)) * scale)) for x, y in vertices]


def _unit(dx: float, dy: float) -> Point:
    norm = math.hypot(dx, dy) or 1.0
    return dx / norm, dy / norm


def render_problem(problem: Geo3kProblem, image_size: int = 64) -> Image.Image:
    """Draw ``problem``'s figure as an RGB ``image_size`` x ``image_size`` PIL image (black on white)."""
    size = int(image_size)
    font_size = max(8, size // 6)
    font = ImageFont.load_default(size=font_size)
    margin = max(1.4 * font_size, 0.18 * size)
    pts = _fit(problem.vertices, size, margin)
    cx, cy = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    width = max(1, size // 64)

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon(pts, outline="black", width=width)

    if problem.right_angle_at is not None:
        i = problem.right_angle_at
        v, prev, nxt = pts[i], pts[i - 1], pts[(i + 1) % len(pts)]
        side = max(3.0, size / 14)
        u1, u2 = _unit(prev[0] - v[0], prev[1] - v[1]), _unit(nxt[0] - v[0], nxt[1] - v[1])
        p1 = (v[0] + u1[0] * side, v[1] + u1[1] * side)
        p3 = (v[0] + u2[0] * side, v[1] + u2[1] * side)
        p2 = (p1[0] + u2[0] * side, p1[1] + u2[1] * side)
        draw.line([p1, p2, p3], fill="black", width=width)

    def put(anchor: Point, direction: Point, gap: float, text: str) -> None:
        """Draw ``text`` centred ``gap`` px plus half its extent away from ``anchor`` along ``direction``."""
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="mm")
        w, h = right - left, bottom - top
        dist = gap + 0.5 * (abs(direction[0]) * w + abs(direction[1]) * h)
        x = min(max(anchor[0] + direction[0] * dist, w / 2), size - w / 2)
        y = min(max(anchor[1] + direction[1] * dist, h / 2), size - h / 2)
        draw.text((x, y), text, fill="black", font=font, anchor="mm")

    for i, text in problem.edge_labels:
        p, q = pts[i], pts[(i + 1) % len(pts)]
        mx, my = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2
        nx, ny = _unit(q[1] - p[1], p[0] - q[0])  # edge normal, flipped to point away from the centroid
        if nx * (mx - cx) + ny * (my - cy) < 0:
            nx, ny = -nx, -ny
        put((mx, my), (nx, ny), 0.25 * font_size, text)

    for i, text in problem.vertex_labels:
        vx, vy = pts[i]
        put((vx, vy), _unit(vx - cx, vy - cy), 0.15 * font_size, text)

    return image


def make_geo3k_like(n: int = 16, seed: int = 0, image_size: int = 64) -> datasets.Dataset:
    """Build a Geometry3K-shaped :class:`datasets.Dataset` of ``n`` synthetic problems.

    Columns (types as in ``hiyouga/geometry3k``, see :data:`GEO3K_FEATURES`): ``images`` (list with one RGB
    PIL image of ``image_size`` x ``image_size``), ``problem`` (``"<image>..."``), ``answer`` (integer string).
    Row ``i`` is ``sample_geo3k_problems(n, seed)[i]`` rendered with :func:`render_problem`.
    """
    problems = sample_geo3k_problems(n, seed)
    return datasets.Dataset.from_dict(
        {
            "images": [[render_problem(p, image_size)] for p in problems],
            "problem": [p.problem for p in problems],
            "answer": [p.answer for p in problems],
        },
        features=GEO3K_FEATURES,
    )


def write_geo3k_parquet(
    out_dir: str | Path, n_train: int = 16, n_test: int = 8, seed: int = 0, image_size: int = 64
) -> Path:
    """Write ``train.parquet`` and ``test.parquet`` Geometry3K-like splits into ``out_dir``.

    Images are stored as ``datasets`` stores ``Image`` features (a ``{"bytes": png, "path": None}`` struct
    plus the features in the parquet schema metadata), so
    ``datasets.load_dataset("parquet", data_files={"train": ..., "test": ...})`` gives PIL images back.
    The train split uses ``seed``, the test split ``seed + 1``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path` (created if missing).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make_geo3k_like(n_train, seed=seed, image_size=image_size).to_parquet(str(out / "train.parquet"))
    make_geo3k_like(n_test, seed=seed + 1, image_size=image_size).to_parquet(str(out / "test.parquet"))
    return out
