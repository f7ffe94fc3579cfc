"""Ultralytics YOLO datasets (a ``data.yaml``, image folders and one label text file per image) as records.

The dataset YAML (read with ``yaml.safe_load``):
- ``path``: the dataset root, relative to the YAML's folder (default: that folder).
- ``train`` / ``val`` / ``test``: a folder of images (searched recursively), a ``.txt`` file listing
  image paths, or a list of those, relative to the root. Relative lines of a list file are taken
  from the root too, except ``./...`` lines, which Ultralytics takes from the list file's folder.
- ``names``: a list of class names, or a dict ``{index: name}`` with indices 0..C-1.

The label file of ``<...>/images/<...>/x.jpg`` is ``<...>/labels/<...>/x.txt`` (Ultralytics' rule:
the last ``images`` folder of the path becomes ``labels``; without one the label file lies beside
the image). Each line is ``class cx cy w h`` normalized to [0, 1], or a segment
``class x1 y1 x2 y2 ...`` (at least three points) whose bounding box is the object's box. An
empty label file is a background image; a missing one counts as a problem, but the image is kept
without objects, as Ultralytics does.

Records follow the data contract: boxes ``[cy - h/2, cx - w/2, cy + h/2, cx + w/2]`` (these are
already edge coordinates), ``difficult`` False, ``image_id`` the image path relative to the
root without its extension (``images/val/000001``). Bad lines are skipped, boxes clipped to the
image or dropped, and all of it logged in the ``ProblemLog``; a class index that is not one of
the YAML's classes is an error naming the label file.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence, Tuple

import yaml

from scratchdet_tf.data import annotations

SPLITS = ("train", "val", "test")
# What tf.io.decode_image reads; Ultralytics' other formats are reported and skipped.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
UNDECODABLE_EXTENSIONS = (".dng", ".heic", ".mpo", ".pfm", ".tif", ".tiff", ".webp")
# Normalized coordinates may stick out of [0, 1] by float slop; only more than this is reported.
CLIP_TOLERANCE = 1e-3


def class_names(yaml_path: str) -> Tuple[str, ...]:
    """The C class names of a dataset YAML in label order (its ``names``).

    Raises:
      FileNotFoundError: naming a missing YAML.
      ValueError: naming the YAML when it or its ``names`` are malformed.
    """
    return _names(load_yaml(yaml_path), yaml_path)


def load_yaml(yaml_path: str) -> dict:
    """The parsed dataset YAML (a mapping).

    Raises:
      FileNotFoundError: naming a missing YAML.
      ValueError: naming a YAML that cannot be parsed or is not a mapping.
    """
    if not os.path.isfile(yaml_path):
        raise FileNotFoundError(f"no such YOLO dataset YAML: {yaml_path}")
    try:
        with open(yaml_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{yaml_path}: not a YAML file ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{yaml_path}: a YOLO dataset YAML must be a mapping (path, train, val, names)")
    return data


def read_yolo(yaml_path: str, split: str, max_pixels: int = annotations.DEFAULT_MAX_PIXELS) -> annotations.Records:
    """Reads one split of an Ultralytics dataset (see the module doc).

    Args:
      yaml_path: the dataset YAML.
      split: ``train``, ``val`` or ``test``.
      max_pixels: images whose header declares more pixels are skipped (``annotations.oversized``).

    Returns:
      ``annotations.Records`` (``category_ids`` empty).

    Raises:
      FileNotFoundError: naming a missing YAML, dataset root, image folder or list file.
      ValueError: naming the YAML (bad ``names``, no such split), or the label file and class of an
        object whose class index is not one of the YAML's classes, or two images sharing one id.
    """
    data = load_yaml(yaml_path)
    names = _names(data, yaml_path)
    root = dataset_root(data, yaml_path)
    records = annotations.Records(class_names=names)
    files = _split_images(data, split, root, yaml_path, records.problems)
    _check_unique_ids(files, root, yaml_path)
    listings: Dict[str, set] = {}
    for path in files:
        folder = os.path.dirname(path)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        problem = annotations.unusable_image(path, os.path.basename(path) in listings[folder], max_pixels)
        if problem:
            records.problems.add(problem, path)
            continue
        boxes, labels = read_label_file(label_path(path), names, records.problems)
        records.append(path, image_id(path, root), boxes, labels, [False] * len(labels))
    return records


def dataset_root(data: dict, yaml_path: str) -> str:
    """The dataset root: ``path`` relative to the YAML's folder, or that folder.

    Raises:
      FileNotFoundError: naming a root folder that does not exist.
    """
    folder = os.path.dirname(os.path.abspath(yaml_path))
    path = data.get("path")
    root = os.path.normpath(os.path.join(folder, str(path))) if path not in (None, "") else folder
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{yaml_path}: no such dataset root folder (path): {root}")
    return root


def label_path(image_path: str) -> str:
    """The label file of an image: the last ``images`` folder becomes ``labels``, the extension ``.txt``."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    path = f"{head}{os.sep}labels{os.sep}{tail}" if sep else image_path
    return os.path.splitext(path)[0] + ".txt"


def image_id(image_path: str, root: str) -> str:
    """The image path relative to the dataset root, without its extension, with ``/`` separators."""
    return os.path.splitext(os.path.relpath(image_path, root))[0].replace(os.sep, "/")


def read_label_file(path: str, names: Sequence[str], problems: annotations.ProblemLog
                    ) -> Tuple[List[List[float]], List[int]]:
    """(boxes as normalized yxyx, labels) of one label file; bad lines and boxes are logged in ``problems``.

    Raises:
      ValueError: naming the file, line and class when a class is not an index 0..C-1 of ``names``.
    """
    if not os.path.isfile(path):
        problems.add("no label file, image kept without objects", path)
        return [], []
    boxes, labels = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            values = line.split()
            if not values:
                continue
            where = f"{path} (line {number})"
            coords = _coordinates(values, where, problems)
            if coords is None:
                continue
            label = _class_index(values[0], names, where)
            box = _clip(coords, where, problems)
            if box is not None:
                boxes.append(box)
                labels.append(label)
    return boxes, labels


def _coordinates(values: List[str], where: str, problems: annotations.ProblemLog) -> List[float] | None:
    """[xmin, ymin, xmax, ymax] (normalized, unclipped) of a box or segment line, or None (logged)."""
    count = len(values) - 1
    if count != 4 and (count < 6 or count % 2):
        problems.add("malformed label line (not 'class cx cy w h' or a polygon of 3+ points), skipped", where)
        return None
    try:
        numbers = [float(v) for v in values[1:]]
    except ValueError:
        problems.add("label line with a non-number, skipped", where)
        return None
    if not all(math.isfinite(v) for v in numbers):
        problems.add("label line with a non-finite number, skipped", where)
        return None
    if count == 4:
        cx, cy, w, h = numbers
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    xs, ys = numbers[0::2], numbers[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _class_index(token: str, names: Sequence[str], where: str) -> int:
    """The class of a label line, which must be an integer 0..C-1 (``3`` or ``3.0``)."""
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value) and 0 <= value < len(names)):
        raise ValueError(f"{where}: class {token!r} is not one of the {len(names)} class indices "
                         f"0..{len(names) - 1} ({', '.join(names)})")
    return int(value)


def _clip(coords: List[float], where: str, problems: annotations.ProblemLog) -> List[float] | None:
    """Normalized yxyx clipped to [0, 1] (logged beyond ``CLIP_TOLERANCE``), or None (logged) without area."""
    xmin, ymin, xmax, ymax = coords
    cx0, cy0, cx1, cy1 = (min(max(v, 0.0), 1.0) for v in coords)
    if cx1 <= cx0 or cy1 <= cy0:
        problems.add("box with no area inside the image, dropped", where)
        return None
    if max(abs(cx0 - xmin), abs(cy0 - ymin), abs(cx1 - xmax), abs(cy1 - ymax)) > CLIP_TOLERANCE:
        problems.add("box outside the image, clipped", where)
    return [cy0, cx0, cy1, cx1]


def _names(data: dict, yaml_path: str) -> Tuple[str, ...]:
    """``names`` as a tuple in label order: a list, or a dict whose keys are exactly 0..C-1."""
    names = data.get("names")
    if isinstance(names, dict):
        keys = list(names)
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys) or sorted(keys) != list(
                range(len(keys))):
            raise ValueError(f"{yaml_path}: names as a dict must have the keys 0..C-1, got {keys}")
        names = [names[k] for k in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{yaml_path}: 'names' must be a non-empty list or a dict {{index: name}}, got {names!r}")
    names = tuple(str(n).strip() for n in names)
    if not all(names):
        raise ValueError(f"{yaml_path}: empty class name in 'names' ({list(names)})")
    count = data.get("nc")
    if count is not None and count != len(names):
        raise ValueError(f"{yaml_path}: nc is {count} but 'names' has {len(names)} classes")
    return names


def _entry_path(entry: str, root: str) -> str:
    """A split entry's path under the dataset root. Roboflow's exports write ``../train/images`` beside a YAML
    inside the dataset folder; like Ultralytics, such an entry falls back to ``train/images`` when the
    ``../`` path does not exist."""
    path = os.path.normpath(os.path.join(root, entry))
    if not os.path.exists(path) and entry.startswith("../"):
        fallback = os.path.normpath(os.path.join(root, entry[3:]))
        if os.path.exists(fallback):
            return fallback
    return path


def _split_images(data: dict, split: str, root: str, yaml_path: str, problems: annotations.ProblemLog) -> List[str]:
    """The image paths of a split, in order: each folder sorted, each list file in its order."""
    if split not in SPLITS:
        raise ValueError(f"{yaml_path}: split {split!r} is not one of {', '.join(SPLITS)}")
    entries = data.get(split)
    if entries in (None, "", []):
        raise ValueError(f"{yaml_path}: no {split!r} key (a folder of images, a .txt list of images, or a list)")
    if not isinstance(entries, list):
        entries = [entries]
    files, seen = [], set()
    for entry in entries:
        for path in _entry_images(_entry_path(str(entry), root), root, yaml_path, problems):
            if path in seen:
                problems.add("image listed more than once, repeat skipped", path)
                continue
            seen.add(path)
            files.append(path)
    return files


def _entry_images(path: str, root: str, yaml_path: str, problems: annotations.ProblemLog) -> List[str]:
    """The images of one split entry: a folder (recursively, sorted) or a list file."""
    if os.path.isdir(path):
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders.sort()
            found.extend(os.path.join(folder, n) for n in sorted(names))
        return [f for f in found if _is_image(f, problems, listed=False)]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{yaml_path}: no such image folder or list file: {path}")
    if not path.endswith(".txt"):
        return [path] if _is_image(path, problems, listed=True) else []
    files = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            base = os.path.dirname(path) if line.startswith("./") else root
            image = os.path.normpath(os.path.join(base, line))
            if _is_image(image, problems, listed=True):
                files.append(image)
    return files


def _is_image(path: str, problems: annotations.ProblemLog, listed: bool) -> bool:
    """Whether a path has a decodable image extension; other image formats (or, if ``listed``, any file) are logged."""
    extension = os.path.splitext(path)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return True
    if listed or extension in UNDECODABLE_EXTENSIONS:
        problems.add(f"not a {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} image, skipped", path)
    return False


def _check_unique_ids(files: List[str], root: str, yaml_path: str) -> None:
    """Two images with one id (``a.jpg`` and ``a.png``) would share a label file too: an error naming them."""
    first: Dict[str, str] = {}
    for path in files:
        key = image_id(path, root)
        if key in first:
            raise ValueError(f"{yaml_path}: images {first[key]} and {path} share the id {key!r} and the label file "
                             f"{label_path(path)}; rename one")
        first[key] = path


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
