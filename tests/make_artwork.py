"""Draw the pack's icon (web/icon.png) and the template browser's thumbnails (workflows/<name>.jpg).

ComfyUI's template browser shows ``<name>.jpg`` next to ``workflows/<name>.json`` as the card's picture and
uses the file name as its text, so each thumbnail carries the workflow's title and one-line description
(``extra.info`` in the workflow). Run it after adding or describing a workflow:

    python tests/make_artwork.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
ICON = ROOT / "web" / "icon.png"
THUMBNAIL_SIZE = 512
ICON_SIZE = 400
SCALE = 4  # drawn large, then scaled down: smooth edges without an anti-aliasing library

NAVY, INK, PAPER = (23, 28, 42), (44, 52, 74), (244, 239, 230)
CORAL, TEAL, GOLD, VIOLET = (232, 114, 92), (63, 167, 160), (227, 179, 76), (138, 123, 214)
MUTED = (168, 176, 196)

# What each workflow's strip shows: (route badge, shapes drawn in the three frames).
STRIPS = {
    "story_sd15_img2img": ("img2img edits", "grow"),
    "story_flux_kontext_reference": ("reference latent", "grow"),
    "story_flux2_klein_reference": ("reference latent", "grow"),
    "story_flux2_klein_cast": ("a cast that holds", "grow"),
    "story_qwen_image_edit": ("your picture, continued", "continue"),
    "plan_to_prompts_hand_built": ("built from core nodes", "prompts"),
    "batch_story_list": ("one storyboard per story", "batch"),
}


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], colour) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rounded_rectangle(box, radius=(x1 - x0) * 0.12, fill=colour)
    else:  # triangle
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def frame(draw, box, contents, *, accepted: bool = False) -> None:
    """One storyboard frame with its shapes; ``contents`` are (kind, colour, cx, cy, size) in 0..1 units."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw.rounded_rectangle(box, radius=w * 0.08, fill=PAPER)
    for kind, colour, cx, cy, size in contents:
        half = size * w / 2
        shape(
            draw,
            kind,
            (x0 + cx * w - half, y0 + cy * h - half, x0 + cx * w + half, y0 + cy * h + half),
            colour,
        )
    if accepted:  # the Critic's tick
        r = w * 0.13
        cx, cy = x1 - r * 0.9, y0 + r * 0.9
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=TEAL)
        draw.line(
            [(cx - r * 0.5, cy), (cx - r * 0.1, cy + r * 0.4), (cx + r * 0.55, cy - r * 0.4)],
            fill=PAPER,
            width=max(2, int(r * 0.28)),
            joint="curve",
        )


GROW = [
    [("circle", GOLD, 0.5, 0.55, 0.34)],
    [("circle", GOLD, 0.32, 0.6, 0.3), ("square", CORAL, 0.7, 0.6, 0.28)],
    [
        ("circle", GOLD, 0.28, 0.62, 0.26),
        ("square", CORAL, 0.68, 0.62, 0.26),
        ("triangle", TEAL, 0.5, 0.28, 0.26),
    ],
]
STRIP_CONTENTS = {
    "grow": GROW,
    "continue": [
        [("square", VIOLET, 0.5, 0.55, 0.38)],
        [("square", VIOLET, 0.36, 0.58, 0.32), ("circle", GOLD, 0.72, 0.32, 0.24)],
        [
            ("square", VIOLET, 0.3, 0.6, 0.3),
            ("circle", GOLD, 0.72, 0.3, 0.22),
            ("triangle", CORAL, 0.7, 0.7, 0.3),
        ],
    ],
    "prompts": GROW,
    "batch": GROW,
}


def strip(draw, top: float, width: float, style: str) -> None:
    """Three frames in a row joined by arrows, the last one accepted, with the Critic's loop above."""
    margin, gap = width * 0.07, width * 0.06
    side = (width - 2 * margin - 2 * gap) / 3
    boxes = [(margin + i * (side + gap), top, margin + i * (side + gap) + side, top + side) for i in range(3)]
    if style == "batch":  # more storyboards stacked behind this one
        for depth in (2, 1):
            offset = depth * width * 0.018
            for x0, y0, x1, y1 in boxes:
                draw.rounded_rectangle(
                    (x0 + offset, y0 - offset, x1 + offset, y1 - offset), radius=side * 0.08, fill=INK
                )
    for i, box in enumerate(boxes):
        frame(draw, box, STRIP_CONTENTS[style][i], accepted=i == 2)
    line = max(3, int(width * 0.008))
    for left, right in zip(boxes, boxes[1:]):
        y = (left[1] + left[3]) / 2
        x0, x1 = left[2] + gap * 0.18, right[0] - gap * 0.18
        draw.line([(x0, y), (x1 - gap * 0.12, y)], fill=MUTED, width=line)
        draw.polygon([(x1, y), (x1 - gap * 0.3, y - gap * 0.2), (x1 - gap * 0.3, y + gap * 0.2)], fill=MUTED)
    # The refine loop: from the last frame back over the middle one.
    a, b = boxes[1], boxes[2]
    arc = ((a[0] + a[2]) / 2, top - side * 0.34, (b[0] + b[2]) / 2, top + side * 0.3)
    draw.arc(arc, start=195, end=345, fill=CORAL, width=line)
    tip_x, tip_y = arc[0] + (arc[2] - arc[0]) * 0.02, (arc[1] + arc[3]) / 2 + side * 0.02
    draw.polygon(
        [(tip_x, tip_y + gap * 0.35), (tip_x - gap * 0.22, tip_y), (tip_x + gap * 0.24, tip_y - gap * 0.05)],
        fill=CORAL,
    )


def wrap(draw, text: str, typeface, width: float) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=typeface) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    return lines + [current] if current else lines


def thumbnail(name: str, title: str, description: str) -> Image.Image:
    size = THUMBNAIL_SIZE * SCALE
    image = Image.new("RGB", (size, size), NAVY)
    draw = ImageDraw.Draw(image)
    badge, style = STRIPS.get(name, ("", "grow"))
    strip(draw, size * 0.24, size, style)
    margin = size * 0.07
    draw.text((margin, size * 0.05), "InterleaveThinker", font=font(int(size * 0.04)), fill=MUTED)
    if badge:
        badge_font = font(int(size * 0.038))
        width = draw.textlength(badge, font=badge_font)
        x1, y0 = size - margin, size * 0.045
        draw.rounded_rectangle(
            (x1 - width - size * 0.04, y0, x1, y0 + size * 0.062), radius=size * 0.031, fill=INK
        )
        draw.text((x1 - width - size * 0.02, y0 + size * 0.011), badge, font=badge_font, fill=PAPER)
    y = size * 0.62
    scale = 0.072
    while len(wrap(draw, title, font(int(size * scale)), size - 2 * margin)) > 2 and scale > 0.045:
        scale -= 0.004  # a long title gets a smaller type, never a cut
    title_font = font(int(size * scale))
    for line in wrap(draw, title, title_font, size - 2 * margin):
        draw.text((margin, y), line, font=title_font, fill=PAPER)
        y += size * scale * 1.22
    y += size * 0.015
    text_font = font(int(size * 0.046))
    for line in wrap(draw, description, text_font, size - 2 * margin):
        draw.text((margin, y), line, font=text_font, fill=MUTED)
        y += size * 0.062
    return image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)


def icon() -> Image.Image:
    size = ICON_SIZE * SCALE
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=size * 0.2, fill=NAVY)
    strip(draw, size * 0.4, size, "grow")
    return image.resize((ICON_SIZE, ICON_SIZE), Image.Resampling.LANCZOS)


def save(image: Image.Image, path: Path, **options) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="JPEG" if path.suffix == ".jpg" else "PNG", **options)
    os.replace(temporary, path)


def main() -> None:
    save(icon(), ICON, optimize=True)
    for path in sorted(WORKFLOWS.glob("*.json")):
        info = json.loads(path.read_text(encoding="utf-8"))["extra"]["info"]
        save(thumbnail(path.stem, info["name"], info["description"]), path.with_suffix(".jpg"), quality=88)
        print(path.with_suffix(".jpg").relative_to(ROOT))
    print(ICON.relative_to(ROOT))


if __name__ == "__main__":
    main()
