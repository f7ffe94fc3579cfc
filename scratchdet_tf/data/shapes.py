"""The built-in synthetic detection dataset: coloured shapes on textured, noisy backgrounds.

``write_split`` writes one COCO-format split (``instances.json`` + JPEGs) that the COCO
reader reads like any other COCO directory; ``layout="voc"`` or ``"yolo"`` writes the same
images and boxes as a VOC devkit or an Ultralytics YOLO dataset instead (``LAYOUTS``), and
``class_names`` renames the five classes. Everything is drawn with numpy + PIL and is
deterministic: image ``i`` of split ``s`` depends only on ``(seed, s, i)``.

Each image is 160-400 px per side and never square; it holds 1-6 objects of 5 classes
(circle, square, triangle, cross, ring) whose sides are 5-60 % of the image's shorter
side (``object_size`` and ``max_objects`` change both ranges). Objects overlap only
partially: IoU <= 0.3 with every earlier object, and a later object (drawn on top)
covers at most half of an earlier object's box. Each ``bbox`` is the tight box of the
object's own drawn mask (full extent, occlusion ignored) in pixel-edge coordinates:
``[x, y, w, h]`` with ``x = first column``, ``w = last column + 1 - x``. ``area`` is the
mask's pixel count (COCO's segment-area meaning), ``iscrowd`` is 0. Category ids are 1..5.

Layouts of ``out_dir`` (``source_uris`` gives the URIs that read them):
- ``coco``: ``<split>/instances.json`` and ``<split>/000001.jpg``...
- ``voc``: a VOC2007-like devkit: ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (with
  ``<size>``; boxes in 1-based inclusive pixels ``xmin = x + 1``, ``xmax = x + w``),
  ``ImageSets/Main/<split>.txt`` and a CVAT-style ``labelmap.txt`` fixing the label order. Ids
  are ``1000001``... for train and ``2000001``... for val (one folder holds both splits).
- ``yolo``: ``images/<split>/000001.jpg``, ``labels/<split>/000001.txt`` (``class cx cy w h``,
  normalized, 6 decimals) and ``data.yaml`` naming the splits written so far.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring")
MIN_SIDE, MAX_SIDE = 160, 400
MAX_OBJECTS = 6
OBJECT_SIZE = (0.05, 0.6)  # object side / the image's shorter side
_SPLIT_IDS = {"train": 0, "val": 1}
LAYOUTS = ("coco", "voc", "yolo")
YOLO_YAML = "data.yaml"
_VOC_XML = ("<annotation><folder>shapes</folder><filename>{file}</filename><size><width>{w}</width>"
            "<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>\n")
_VOC_OBJECT = ("<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
               "<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")

# One drawn image (its pixels are written at once): (file stem, (height, width), [(label, (x, y, w, h), area)]).
_Drawn = Tuple[str, Tuple[int, int], List[Tuple[int, Tuple[int, int, int, int], int]]]


def write_split(out_dir: str, split: str, num_images: int, seed: int = 0, jpeg_quality: int = 90, *,
                object_size: Tuple[float, float] = OBJECT_SIZE, max_objects: int = MAX_OBJECTS,
                layout: str = "coco", class_names: Sequence[str] = CLASS_NAMES) -> str:
    """Draws ``num_images`` images of one split into ``out_dir`` in a layout (see the module doc).

    Args:
      out_dir: dataset root (created).
      split: ``"train"`` or ``"val"`` (selects an independent random stream).
      num_images: images to write.
      seed: dataset seed.
      jpeg_quality: PIL JPEG quality.
      object_size: (min, max) object side as a fraction of the image's shorter side.
      max_objects: each image holds 1..max_objects objects (fewer when they do not fit).
      layout: ``"coco"``, ``"voc"`` or ``"yolo"``; the same seed draws the same images and boxes in each.
      class_names: the names of the five classes (circle, square, triangle, cross, ring), in that order.

    Returns:
      The written ``instances.json`` (coco), ``ImageSets/Main/<split>.txt`` (voc) or ``data.yaml`` (yolo).

    Raises:
      ValueError: naming a bad split, layout or class name list.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split {split!r} is not one of {sorted(_SPLIT_IDS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    class_names = tuple(str(n) for n in class_names)
    if len(class_names) != len(CLASS_NAMES) or len(set(class_names)) != len(CLASS_NAMES) or not all(
            n.strip() == n and n and ":" not in n for n in class_names):
        raise ValueError(f"class_names must be {len(CLASS_NAMES)} distinct names (no ':' or outer spaces) for "
                         f"{', '.join(CLASS_NAMES)}; got {list(class_names)}")
    stem = (lambda i: f"{_SPLIT_IDS[split] + 1}{i + 1:06d}") if layout == "voc" else (lambda i: f"{i + 1:06d}")
    folder = {"coco": os.path.join(out_dir, split), "voc": os.path.join(out_dir, "JPEGImages"),
              "yolo": os.path.join(out_dir, "images", split)}[layout]
    os.makedirs(folder, exist_ok=True)
    drawn = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
        pixels, objects = draw_image(rng, object_size=object_size, max_objects=max_objects)
        Image.fromarray(pixels).save(os.path.join(folder, f"{stem(index)}.jpg"), quality=jpeg_quality)
        drawn.append((stem(index), pixels.shape[:2], objects))
    writer = {"coco": _write_coco, "voc": _write_voc, "yolo": _write_yolo}[layout]
    return writer(out_dir, split, drawn, class_names)


def _write_coco(out_dir: str, split: str, drawn: List[_Drawn], class_names: Tuple[str, ...]) -> str:
    """``out_dir/split/instances.json`` of the drawn images (ids 1..N, category ids 1..5)."""
    images, annotations = [], []
    for index, (stem, (height, width), objects) in enumerate(drawn):
        images.append({"id": index + 1, "file_name": f"{stem}.jpg", "width": width, "height": height})
        for label, (x, y, w, h), area in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                "bbox": [x, y, w, h], "area": area, "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(class_names)]
    path = os.path.join(out_dir, split, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def _write_voc(out_dir: str, split: str, drawn: List[_Drawn], class_names: Tuple[str, ...]) -> str:
    """``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt`` and ``labelmap.txt`` of the drawn images."""
    from xml.sax.saxutils import escape

    for sub in ("Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    for stem, (height, width), objects in drawn:
        xml_objects = "".join(_VOC_OBJECT.format(name=escape(class_names[label]), x0=x + 1, y0=y + 1, x1=x + w,
                                                 y1=y + h) for label, (x, y, w, h), _ in objects)
        with open(os.path.join(out_dir, "Annotations", f"{stem}.xml"), "w", encoding="utf-8") as f:
            f.write(_VOC_XML.format(file=f"{stem}.jpg", w=width, h=height, objects=xml_objects))
    with open(os.path.join(out_dir, "labelmap.txt"), "w", encoding="utf-8") as f:
        f.write("# label:color_rgb:parts:actions\nbackground:0,0,0::\n")
        f.writelines(f"{name}:{(50 * i) % 256},{(90 * i) % 256},{(140 * i) % 256}::\n"
                     for i, name in enumerate(class_names, 1))
    path = os.path.join(out_dir, "ImageSets", "Main", f"{split}.txt")
    with open(path, "w") as f:
        f.writelines(f"{stem}\n" for stem, _, _ in drawn)
    return path


def _write_yolo(out_dir: str, split: str, drawn: List[_Drawn], class_names: Tuple[str, ...]) -> str:
    """``labels/<split>/<id>.txt`` of the drawn images and ``data.yaml`` naming every split written so far."""
    import yaml

    label_dir = os.path.join(out_dir, "labels", split)
    os.makedirs(label_dir, exist_ok=True)
    for stem, (height, width), objects in drawn:
        with open(os.path.join(label_dir, f"{stem}.txt"), "w") as f:
            f.writelines(f"{label} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} "
                         f"{h / height:.6f}\n" for label, (x, y, w, h), _ in objects)
    data = {"path": "."}
    data.update({s: f"images/{s}" for s in _SPLIT_IDS if os.path.isdir(os.path.join(out_dir, "images", s))})
    data["names"] = dict(enumerate(class_names))
    path = os.path.join(out_dir, YOLO_YAML)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return path


def source_uris(out_dir: str, layout: str = "coco") -> Dict[str, str]:
    """{split: data URI} that reads the dataset ``write_dataset`` wrote in ``layout`` (``--data.train_source``...)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    base = {"coco": f"shapes:{out_dir}", "voc": f"voc:{out_dir}",
            "yolo": f"yolo:{os.path.join(out_dir, YOLO_YAML)}"}[layout]
    return {split: f"{base}:{split}" for split in _SPLIT_IDS}


def draw_image(rng: np.random.Generator, noise: bool = True, *, object_size: Tuple[float, float] = OBJECT_SIZE,
               max_objects: int = MAX_OBJECTS) -> Tuple[np.ndarray, List[Tuple[int, Tuple[int, int, int, int], int]]]:
    """Draws one image.

    Args:
      rng: the image's random generator.
      noise: add the final Gaussian pixel noise (tests turn it off to see exact colours).
      object_size: (min, max) object side as a fraction of the image's shorter side.
      max_objects: at most this many objects.

    Returns:
      (pixels uint8 [H, W, 3], objects) where each object is
      ``(label 0..4, (x, y, w, h) tight pixel box, mask area)``.
    """
    height, width = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)
    if height == width:
        width = width - 17 if width > MIN_SIDE + 20 else width + 17
    image = _background(rng, height, width)
    placed: List[Tuple[int, Tuple[int, int, int, int], int]] = []
    short = min(height, width)
    for _ in range(rng.integers(1, max_objects + 1)):
        for _attempt in range(20):
            label = int(rng.integers(len(CLASS_NAMES)))
            side = int(round(rng.uniform(*object_size) * short))
            aspect = rng.uniform(0.7, 1.4) if label == 2 else 1.0  # triangles vary in aspect
            h, w = max(8, side), max(8, int(round(side * aspect)))
            w = min(w, width)
            y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            mask = _shape_mask(rng, label, h, w)
            ys, xs = np.nonzero(mask)
            box = (x0 + int(xs.min()), y0 + int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            if all(_overlap_ok(box, other) for _, other, _ in placed):
                break
        else:
            continue
        region = image[y0:y0 + h, x0:x0 + w]
        region[mask] = _object_colour(rng, region[mask].mean(axis=0))
        placed.append((label, box, int(mask.sum())))
    if noise:
        image = image + rng.normal(0.0, rng.uniform(3.0, 12.0), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), placed


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float32 [H, W, 3] texture: a colour gradient plus random stripes, checks or plaid."""
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    c0, c1, c2 = (rng.uniform(30, 225, size=3).astype(np.float32) for _ in range(3))
    image = c0 + (c1 - c0) * yy + (c2 - c0) * xx * 0.5
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 30)
    short = min(height, width)
    phase = (np.cos(angle) * yy[..., 0] * height + np.sin(angle) * xx[..., 0] * width) / short
    kind = rng.integers(3)
    if kind == 0:
        texture = np.sin(2 * np.pi * freq * phase)
    elif kind == 1:
        texture = np.sign(np.sin(2 * np.pi * freq * yy[..., 0]) * np.sin(2 * np.pi * freq * xx[..., 0]))
    else:
        texture = np.sin(2 * np.pi * freq * phase) * np.sin(2 * np.pi * freq * 0.7 * xx[..., 0])
    image = image + rng.uniform(5, 35) * texture[..., None]
    return np.clip(image, 0, 255)


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """Bool [h, w] mask of one shape drawn (without anti-aliasing) to fill an h x w box."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASS_NAMES[label]
    if name == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif name == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif name == "triangle":
        if rng.random() < 0.5:
            draw.polygon([(w / 2, 0), (0, h - 1), (w - 1, h - 1)], fill=1)
        else:
            draw.polygon([(0, 0), (w - 1, 0), (w / 2, h - 1)], fill=1)
    elif name == "cross":
        t = max(2, int(round(min(h, w) * rng.uniform(0.2, 0.4))))
        draw.rectangle([(w - t) // 2, 0, (w - t) // 2 + t - 1, h - 1], fill=1)
        draw.rectangle([0, (h - t) // 2, w - 1, (h - t) // 2 + t - 1], fill=1)
    else:  # ring
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
        inset = max(2, int(round(min(h, w) * rng.uniform(0.15, 0.3))))
        draw.ellipse([inset, inset, w - 1 - inset, h - 1 - inset], fill=0)
    return np.asarray(canvas, dtype=bool)


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A random RGB colour at least ~80 away (L2) from the local background mean."""
    for _ in range(10):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background_mean) > 80:
            break
    return colour.astype(np.float32)


def _overlap_ok(new: Tuple[int, int, int, int], old: Tuple[int, int, int, int]) -> bool:
    """Partial overlap only: IoU <= 0.3 and the new (upper) box covers <= half of the old one."""
    iw = max(0, min(new[0] + new[2], old[0] + old[2]) - max(new[0], old[0]))
    ih = max(0, min(new[1] + new[3], old[1] + old[3]) - max(new[1], old[1]))
    inter = iw * ih
    old_area = old[2] * old[3]
    return inter <= 0.3 * (new[2] * new[3] + old_area - inter) and inter <= 0.5 * old_area


def write_dataset(out_dir: str, num_train: int = 2000, num_val: int = 300, seed: int = 0, *,
                  object_size: Tuple[float, float] = OBJECT_SIZE, max_objects: int = MAX_OBJECTS,
                  layout: str = "coco", class_names: Sequence[str] = CLASS_NAMES) -> Dict[str, str]:
    """Writes the train and val splits; returns {split: the path ``write_split`` returns}.

    ``object_size``, ``max_objects``, ``layout`` and ``class_names`` as in ``write_split``; the defaults
    are the documented dataset (``out_dir/train`` and ``out_dir/val`` in COCO format).
    """
    if not 0.0 < object_size[0] <= object_size[1] <= 1.0:
        raise ValueError(f"object_size must be 0 < min <= max <= 1 (fractions of the shorter side); got {object_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1; got {max_objects}")
    kwargs = dict(object_size=tuple(object_size), max_objects=max_objects, layout=layout,
                  class_names=tuple(class_names))
    return {
        "train": write_split(out_dir, "train", num_train, seed, **kwargs),
        "val": write_split(out_dir, "val", num_val, seed, **kwargs),
    }
