"""Annotation files (VOC devkit XML, COCO JSON; YOLO labels in ``yolo``) parsed once, in Python, into records.

Records hold what tf.data needs to load and augment an image: its file path, a string id
and the data-contract boxes (normalized [ymin, xmin, ymax, xmax] float32 in pixel-edge
coordinates), labels 0..C-1 and difficult flags. Bad annotations are repaired or skipped
here and logged in a ``ProblemLog`` that names the file; nothing bad reaches TensorFlow.

Coordinate conventions:
- VOC XML boxes are 1-based inclusive pixels, so pixel columns xmin..xmax cover the edges
  [xmin - 1, xmax]: normalized ``[(ymin - 1) / H, (xmin - 1) / W, ymax / H, xmax / W]``.
  (TFDS ``voc`` divides without the - 1, so its boxes sit one pixel lower/right on the
  min side.)
- COCO ``[x, y, w, h]`` is already in edge coordinates: ``[y / H, x / W, (y + h) / H, (x + w) / W]``.
- COCO category ids map to labels 0..C-1 in increasing id order (``category_ids[label]``
  is the id). Crowd boxes are dropped for training and kept as ``difficult`` for
  evaluation, so that VOC-style scoring ignores them.

VOC class names: a fixed list (``--data.class_names``), else the devkit's own (``voc_class_names``:
its ``labelmap.txt``, else the names found in its XML, where PASCAL's 20 stay PASCAL's order). An
object's ``<name>`` (stripped) matches a class exactly, else case-insensitively when that identifies
one class (so PASCAL's ``Person`` is ``person``); an object of no class is an error naming its file.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
from typing import Dict, List, Sequence, Tuple

import defusedxml.ElementTree
import numpy as np
from PIL import Image

# The 20 PASCAL VOC classes in the devkit's label order.
VOC_CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                   "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                   "tvmonitor")

# Boxes may stick out of the image by float slop; only more than this (pixels) is reported.
_CLIP_TOLERANCE_PX = 1.0


class ProblemLog:
    """Bad-data events by kind, with the files they came from."""

    def __init__(self):
        self.files: Dict[str, List[str]] = collections.defaultdict(list)

    def add(self, kind: str, file: str) -> None:
        self.files[kind].append(file)

    def extend(self, other: ProblemLog) -> None:
        for kind, files in other.files.items():
            self.files[kind].extend(files)

    @property
    def count(self) -> int:
        return sum(len(files) for files in self.files.values())

    def summary(self, max_files: int = 5) -> str:
        """One line, e.g. ``2 x box outside the image, clipped (a.xml, b.xml)``; "" when clean."""
        parts = []
        for kind, files in sorted(self.files.items()):
            more = f", +{len(files) - max_files} more" if len(files) > max_files else ""
            shown = ", ".join(files[:max_files]) + more
            parts.append(f"{len(files)} x {kind} ({shown})")
        return "; ".join(parts)


@dataclasses.dataclass
class Records:
    """Per-image annotation records of one source, index-aligned lists.

    Attributes:
      files: image paths.
      image_ids: string ids (VOC file stem, COCO id in decimal).
      boxes: float32 [N_i, 4] normalized yxyx per image.
      labels: int32 [N_i].
      difficult: bool [N_i].
      class_names: C names in label order.
      category_ids: COCO category id of each label; () for VOC.
      problems: what was repaired or skipped.
    """

    files: List[str] = dataclasses.field(default_factory=list)
    image_ids: List[str] = dataclasses.field(default_factory=list)
    boxes: List[np.ndarray] = dataclasses.field(default_factory=list)
    labels: List[np.ndarray] = dataclasses.field(default_factory=list)
    difficult: List[np.ndarray] = dataclasses.field(default_factory=list)
    class_names: Tuple[str, ...] = ()
    category_ids: Tuple[int, ...] = ()
    problems: ProblemLog = dataclasses.field(default_factory=ProblemLog)

    def append(self, file, image_id, boxes, labels, difficult) -> None:
        self.files.append(file)
        self.image_ids.append(image_id)
        self.boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        self.labels.append(np.asarray(labels, np.int32).reshape(-1))
        self.difficult.append(np.asarray(difficult, bool).reshape(-1))


def normalize_pixel_box(xmin, ymin, xmax, ymax, height, width, file, problems):
    """Clips a pixel-edge box to the image and normalizes it; None (logged) if it has no area.

    Args:
      xmin, ymin, xmax, ymax: edge coordinates in pixels.
      height, width: image size in pixels.
      file: named in the problem log.
      problems: ``ProblemLog``.

    Returns:
      [ymin, xmin, ymax, xmax] normalized floats, or None.
    """
    values = (xmin, ymin, xmax, ymax)
    if not all(math.isfinite(v) for v in values):
        problems.add("non-finite box, dropped", file)
        return None
    cx0, cy0 = min(max(xmin, 0.0), width), min(max(ymin, 0.0), height)
    cx1, cy1 = min(max(xmax, 0.0), width), min(max(ymax, 0.0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        problems.add("box with no area inside the image, dropped", file)
        return None
    if max(abs(cx0 - xmin), abs(cy0 - ymin), abs(cx1 - xmax), abs(cy1 - ymax)) > _CLIP_TOLERANCE_PX:
        problems.add("box outside the image, clipped", file)
    return [cy0 / height, cx0 / width, cy1 / height, cx1 / width]


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) from the image header only (PIL reads no pixels here)."""
    with Image.open(path) as image:
        return image.height, image.width


DEFAULT_MAX_PIXELS = 50_000_000  # = config.DataConfig.max_image_pixels (tested)


def oversized(path: str, max_pixels: int) -> str | None:
    """A problem line if the file's header declares more than ``max_pixels`` pixels, else None.

    The header is read with PIL (no pixels are decoded). An unreadable header is not judged here:
    the per-epoch check skips and reports such files.
    """
    problem = f"image declaring more than {max_pixels} pixels (--data.max_image_pixels), skipped"
    try:
        height, width = image_size(path)
    except Image.DecompressionBombError:  # PIL's own limit (2 x 89 MP) refuses even to open it
        return problem
    except Exception:  # noqa: BLE001 - any unreadable header: left to the per-epoch check
        return None
    return problem if height * width > max_pixels else None


def unusable_image(path: str, listed: bool, max_pixels: int) -> str | None:
    """Why an image file cannot be used (a problem line), or None.

    Args:
      path: the image file.
      listed: whether its folder listing holds it (one listing per folder is cheaper than a stat each).
      max_pixels: see ``oversized``.
    """
    if not listed:
        return "missing image, skipped"
    if not os.path.isfile(path):  # a FIFO, socket or device would block or never end
        return "not a regular file, skipped"
    return oversized(path, max_pixels)


def known_size(height, width, path: str) -> Tuple[int, int] | None:
    """The annotation's (height, width) when it is a valid pair, else the image header's; None if neither."""
    try:
        height, width = int(float(height)), int(float(width))
    except (TypeError, ValueError):
        height = width = 0
    if height > 0 and width > 0:
        return height, width
    try:
        return image_size(path)
    except Exception:  # noqa: BLE001 - any unreadable header means a bad image
        return None


def read_voc(devkit_dir: str, image_set: str, class_names: Sequence[str],
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Records:
    """Reads ``<devkit_dir>/ImageSets/Main/<image_set>.txt`` and the XML of every listed image.

    Malformed boxes and images whose XML or JPEG is missing or unreadable are skipped and
    logged. XML goes through defusedxml, which rejects entity declarations (billion laughs,
    external entities) instead of expanding them.

    Args:
      devkit_dir: e.g. ``VOCdevkit/VOC2007`` (JPEGImages, Annotations, ImageSets/Main).
      image_set: e.g. ``trainval``.
      class_names: the C class names in label order (``--data.class_names``); empty: the devkit's
        own (``voc_class_names``).
      max_pixels: images whose header declares more pixels are skipped (``oversized``).

    Returns:
      ``Records``.

    Raises:
      FileNotFoundError: naming a missing devkit folder or image-set file.
      ValueError: naming the XML file and the class of an object whose class is not one of the classes.
    """
    list_path = os.path.join(devkit_dir, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"no such VOC image set file: {list_path}")
    if class_names:
        names_from = "--data.class_names"
    else:
        class_names = voc_class_names(devkit_dir)
        labelmap = os.path.join(devkit_dir, LABELMAP_FILE)
        names_from = labelmap if os.path.isfile(labelmap) else f"the classes found in {devkit_dir}/Annotations"
    with open(list_path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    jpeg_dir = os.path.join(devkit_dir, "JPEGImages")
    present = set(os.listdir(jpeg_dir)) if os.path.isdir(jpeg_dir) else set()
    label_of = _class_matcher(class_names)
    records = Records(class_names=tuple(class_names))
    for image_id in ids:
        xml_path = os.path.join(devkit_dir, "Annotations", f"{image_id}.xml")
        jpeg_path = os.path.join(jpeg_dir, f"{image_id}.jpg")
        problem = unusable_image(jpeg_path, f"{image_id}.jpg" in present, max_pixels)
        if problem:
            records.problems.add(problem, jpeg_path)
            continue
        if not os.path.isfile(xml_path):
            records.problems.add("missing annotation file, image skipped", xml_path)
            continue
        try:
            root = defusedxml.ElementTree.parse(xml_path).getroot()
        except Exception as err:  # ParseError, EntitiesForbidden, DTDForbidden, ...
            records.problems.add(f"unreadable annotation ({type(err).__name__}), image skipped", xml_path)
            continue
        size = known_size(root.findtext("size/height"), root.findtext("size/width"), jpeg_path)
        if size is None:
            records.problems.add("no image size in XML or JPEG header, image skipped", xml_path)
            continue
        height, width = size
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if not name:
                records.problems.add("object without a <name>, skipped", xml_path)
                continue
            label = label_of(name)
            if label is None:
                raise ValueError(f"{xml_path}: object class {name!r} is not one of the {len(class_names)} classes "
                                 f"{list(class_names)} ({names_from})")
            try:
                xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                records.problems.add("malformed bndbox, object skipped", xml_path)
                continue
            box = normalize_pixel_box(xmin - 1.0, ymin - 1.0, xmax, ymax, height, width, xml_path, records.problems)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label)
            difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        records.append(jpeg_path, image_id, boxes, labels, difficult)
    return records


LABELMAP_FILE = "labelmap.txt"  # CVAT's Pascal VOC export: name:color:parts:actions per line


def _class_matcher(class_names: Sequence[str]):
    """name -> label: an exact match, else a case-insensitive one when it names one class only; else None."""
    exact = {name: i for i, name in enumerate(class_names)}
    folded = collections.defaultdict(list)
    for i, name in enumerate(class_names):
        folded[name.lower()].append(i)

    def label_of(name: str) -> int | None:
        if name in exact:
            return exact[name]
        matches = folded.get(name.lower(), [])
        return matches[0] if len(matches) == 1 else None

    return label_of


def voc_class_names(devkit_dir: str) -> Tuple[str, ...]:
    """The class names of a VOC devkit in label order, from its own files.

    ``<devkit_dir>/labelmap.txt`` when present (CVAT's export: ``name:color:parts:actions`` lines,
    ``#`` comments; ``background`` is left out), in its order. Else the ``<name>`` of every object in
    every ``<devkit_dir>/Annotations/*.xml`` (all image sets alike, so that a devkit's train and val sets
    agree; unreadable XML is left to the reader): when each one is a PASCAL class (case-insensitively, as
    PASCAL's XML has ``Person`` too), those classes in ``VOC_CLASS_NAMES``' order (all 20 for PASCAL
    itself, and when there is no object at all); else the sorted (Python string order, case-sensitive)
    set of the stripped names. The scan is cached per
    folder and folder modification time.

    Args:
      devkit_dir: e.g. ``VOCdevkit/VOC2007``.

    Returns:
      The C class names.

    Raises:
      FileNotFoundError: naming a missing Annotations folder (when there is no labelmap.txt).
      ValueError: naming a labelmap.txt without any class.
    """
    labelmap = os.path.join(devkit_dir, LABELMAP_FILE)
    if os.path.isfile(labelmap):
        return _labelmap_names(labelmap)
    folder = os.path.join(devkit_dir, "Annotations")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such VOC annotation folder: {folder}")
    found = _annotated_names(os.path.realpath(folder), os.stat(folder).st_mtime_ns)
    pascal = {name.lower() for name in VOC_CLASS_NAMES}
    if all(name.lower() in pascal for name in found):
        # PASCAL itself (or no object at all): its 20 classes; a subset of them: those, in PASCAL's order.
        lowered = {name.lower() for name in found}
        subset = tuple(name for name in VOC_CLASS_NAMES if name in lowered)
        return VOC_CLASS_NAMES if len(subset) in (0, len(VOC_CLASS_NAMES)) else subset
    logging.info("%s: classes from its XML: %s", folder, ", ".join(found))
    return found


def _labelmap_names(path: str) -> Tuple[str, ...]:
    """The class names of a CVAT ``labelmap.txt`` (first field of each line), without ``background``."""
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name = line.split(":", 1)[0].strip()
            if line.lstrip().startswith("#") or not name or name.lower() == "background" or name in names:
                continue
            names.append(name)
    if not names:
        raise ValueError(f"{path}: no class names (lines name:color:parts:actions; background is left out)")
    return tuple(names)


@functools.lru_cache(maxsize=32)
def _annotated_names(folder: str, mtime_ns: int) -> Tuple[str, ...]:
    """The sorted set of object names in ``folder/*.xml`` (``mtime_ns`` keys the cache only)."""
    del mtime_ns
    names = set()
    for file in os.listdir(folder):
        if not file.endswith(".xml"):
            continue
        try:
            root = defusedxml.ElementTree.parse(os.path.join(folder, file)).getroot()
        except Exception:  # noqa: BLE001 - any unreadable XML: the reader reports it
            continue
        names.update(name for name in ((obj.findtext("name") or "").strip() for obj in root.iter("object")) if name)
    return tuple(sorted(names))


def read_coco(json_path: str, image_dir: str, training: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> Records:
    """Reads a COCO ``instances`` JSON.

    Args:
      json_path: the annotation file.
      image_dir: folder holding the ``file_name`` of every image.
      training: drop crowd boxes (True) or keep them as difficult (False).
      max_pixels: images whose header declares more pixels are skipped (``oversized``).

    Returns:
      ``Records`` with ``category_ids``.

    Raises:
      FileNotFoundError: naming a missing JSON file or image folder.
      ValueError: naming a JSON file that cannot be parsed or has no categories.
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"no such COCO annotation file: {json_path}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no such COCO image folder: {image_dir}")
    try:
        with open(json_path) as f:
            data = json.load(f)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{json_path}: not a COCO instances file ({type(err).__name__}: {err})") from err
    if not categories:
        raise ValueError(f"{json_path}: no categories")
    if not isinstance(images, list) or not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{json_path}: not a COCO instances file ('images' and 'annotations' must be lists)")
    label_of = {int(c["id"]): i for i, c in enumerate(categories)}
    records = Records(class_names=tuple(str(c["name"]) for c in categories),
                      category_ids=tuple(int(c["id"]) for c in categories))
    images = _valid_images(images, json_path, records.problems)
    by_image = collections.defaultdict(list)
    known_ids = {img["id"] for img in images}
    for index, ann in enumerate(data.get("annotations", [])):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if _is_id(image_id) and image_id in known_ids:
            by_image[image_id].append(ann)
        else:
            what = f"annotation {ann.get('id')}, image {image_id}" if isinstance(ann, dict) else f"annotation #{index}"
            records.problems.add("annotation of an unknown image, skipped", f"{json_path} ({what})")
    present = set(os.listdir(image_dir))
    for img in images:
        file_name = str(img.get("file_name", ""))
        path = os.path.join(image_dir, file_name)
        problem = unusable_image(path, file_name in present, max_pixels)
        if problem:
            records.problems.add(problem, path)
            continue
        size = known_size(img.get("height"), img.get("width"), path)
        if size is None:
            records.problems.add("no image size in JSON or image header, skipped", path)
            continue
        height, width = size
        boxes, labels, difficult = [], [], []
        for ann in by_image[img["id"]]:
            crowd = bool(ann.get("iscrowd", 0))
            if crowd and training:
                continue
            if not _is_id(ann.get("category_id")) or ann.get("category_id") not in label_of:
                records.problems.add(f"unknown category {ann.get('category_id')!r}, box skipped", path)
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                records.problems.add("malformed bbox, box skipped", path)
                continue
            box = normalize_pixel_box(x, y, x + w, y + h, height, width, path, records.problems)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[ann["category_id"]])
            difficult.append(crowd)
        records.append(path, str(img["id"]), boxes, labels, difficult)
    return records


def _is_id(value) -> bool:
    """COCO ids are numbers or strings (a list or a dict is not one, and is not hashable)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _valid_images(images: list, json_path: str, problems: ProblemLog) -> list:
    """The image records with a usable ``id``; records without one are skipped and logged.

    Raises:
      ValueError: naming the file and the ids that occur more than once (which image owns
        their annotations is ambiguous).
    """
    valid, files_of = [], collections.defaultdict(list)
    for index, img in enumerate(images):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            name = img.get("file_name") if isinstance(img, dict) else None
            problems.add("image record without a valid 'id', skipped", f"{json_path} (images[{index}], {name!r})")
            continue
        valid.append(img)
        files_of[img["id"]].append(str(img.get("file_name", "")))
    duplicates = {k: v for k, v in files_of.items() if len(v) > 1}
    if duplicates:
        shown = "; ".join(f"id {k!r}: {', '.join(v)}" for k, v in list(duplicates.items())[:5])
        raise ValueError(f"{json_path}: {len(duplicates)} image id(s) used by more than one image ({shown}); "
                         "ids must be unique")
    return valid


def coco_class_names(json_path: str) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """(class names, category ids) of a COCO JSON, in label order, without building records."""
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"no such COCO annotation file: {json_path}")
    with open(json_path) as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    return tuple(str(c["name"]) for c in categories), tuple(int(c["id"]) for c in categories)
