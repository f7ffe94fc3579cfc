"""PASCAL VOC devkit files: ground truth (ImageSets/Main, Annotations/*.xml) and comp4 detection files.

Boxes here are the devkit's pixel [xmin, ymin, xmax, ymax] (1-based, inclusive), the format that
`voc_metric.voc_evaluate` takes; `voc_metric.normalized_to_voc_pixels` converts the library's boxes.
"""

import os

import defusedxml.ElementTree
import numpy as np

from scratchdet_tf.data import annotations


def read_image_set(devkit_dir, image_set):
    """Returns the image ids listed in <devkit_dir>/ImageSets/Main/<image_set>.txt, in file order.

    Raises:
      FileNotFoundError: naming the missing folder or file.
    """
    if not os.path.isdir(devkit_dir):
        raise FileNotFoundError(f"no such VOC devkit folder: {devkit_dir}")
    path = os.path.join(devkit_dir, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image set file: {path}")
    with open(path) as f:
        # Lines are "<id>" (or "<id> <flag>" in the per-class lists).
        return [line.split()[0] for line in f if line.strip()]


def read_annotation(xml_path, class_names):
    """Reads one Annotations/<id>.xml.

    Objects whose class is not in class_names are skipped, as the devkit skips other classes; a missing
    <difficult> reads as 0.

    Args:
      xml_path: path of the XML file.
      class_names: C names in label order.

    Returns:
      {"boxes": float64 [N, 4] pixel xyxy, "labels": int64 [N], "difficult": bool [N],
       "image_size": (height, width)}.

    Raises:
      FileNotFoundError / ValueError: naming the file that is missing or malformed.
    """
    if not os.path.isfile(xml_path):
        raise FileNotFoundError(f"no such annotation file: {xml_path}")
    label_of = {name: i for i, name in enumerate(class_names)}
    try:
        root = defusedxml.ElementTree.parse(xml_path).getroot()
        image_size = (int(float(root.findtext("size/height"))), int(float(root.findtext("size/width"))))
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = obj.findtext("name").strip().lower()
            if name not in label_of:
                continue
            boxes.append([float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(label_of[name])
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
    except Exception as err:  # ParseError, a missing tag (None) or a non-number all mean a bad file
        raise ValueError(f"{xml_path}: malformed VOC annotation ({type(err).__name__}: {err})") from err
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "difficult": np.array(difficult, bool), "image_size": image_size}


def read_ground_truth(devkit_dir, image_set, class_names=annotations.VOC_CLASS_NAMES):
    """Reads the ground truth of an image set: {image_id: read_annotation(...)} in image-set order."""
    return {image_id: read_annotation(os.path.join(devkit_dir, "Annotations", f"{image_id}.xml"), class_names)
            for image_id in read_image_set(devkit_dir, image_set)}


def comp4_path(folder, image_set, class_name):
    """Returns <folder>/comp4_det_<image_set>_<class_name>.txt."""
    return os.path.join(folder, f"comp4_det_{image_set}_{class_name}.txt")


def write_comp4(folder, image_set, class_names, detections):
    """Writes one comp4 file per class (lines "image_id score xmin ymin xmax ymax", pixels), empty ones too.

    Lines follow the order of `detections` (write them in image-set order so that tied scores rank as in
    `voc_evaluate`). Scores keep 9 significant digits, which preserves the ranking of float32 scores
    exactly (so re-scoring the files changes no AP through ties); coordinates keep 2 decimals.

    Args:
      folder: output folder (created).
      image_set: e.g. "test"; part of the file names.
      class_names: C names in label order.
      detections: {image_id: {"boxes": [M, 4] pixel xyxy, "scores": [M], "labels": [M]}}.

    Returns:
      The C paths written.
    """
    os.makedirs(folder, exist_ok=True)
    lines = [[] for _ in class_names]
    for image_id, det in detections.items():
        if len(str(image_id).split()) != 1:
            raise ValueError(f"image id {image_id!r} must be one word to fit a comp4 line")
        boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), np.asarray(det["scores"]).tolist(),
                                                  np.asarray(det["labels"]).tolist()):
            lines[label].append(f"{image_id} {score:.9g} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n")
    paths = []
    for name, class_lines in zip(class_names, lines):
        paths.append(comp4_path(folder, image_set, name))
        with open(paths[-1], "w") as f:
            f.writelines(class_lines)
    return paths


def read_comp4(folder, image_set, class_names):
    """Reads the comp4 files of all classes into voc_evaluate's detection format.

    Within an image, detections keep class order, then file order.

    Args:
      folder: folder holding comp4_det_<image_set>_<class>.txt for every class.
      image_set: e.g. "test".
      class_names: C names in label order.

    Returns:
      {image_id (str): {"boxes": float64 [M, 4] pixel xyxy, "scores": float64 [M], "labels": int64 [M]}}.

    Raises:
      FileNotFoundError: naming a missing folder or class file.
      ValueError: naming the file and line of a malformed line.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such results folder: {folder}")
    ids, values, labels = [], [], []
    for label, name in enumerate(class_names):
        path = comp4_path(folder, image_set, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no comp4 file for class {name!r}: {path}")
        with open(path) as f:
            rows = [line.split() for line in f]
        bad = next((n for n, row in enumerate(rows, 1) if len(row) != 6 and row), None)
        if bad is not None:
            got = ' '.join(rows[bad - 1])
            raise ValueError(f"{path}:{bad}: expected 'image_id score xmin ymin xmax ymax', got {got!r}")
        tokens = [token for row in rows for token in row]
        try:
            numbers = np.stack([np.array(tokens[k::6], np.float64) for k in range(1, 6)], 1).reshape(-1, 5)
        except ValueError:
            n, row = next((n, row) for n, row in enumerate(rows, 1) if row and not _all_floats(row[1:]))
            raise ValueError(f"{path}:{n}: non-numeric value in {' '.join(row)!r}") from None
        ids.extend(tokens[0::6])
        values.append(numbers)
        labels.append(np.full(len(numbers), label, np.int64))
    values, labels = np.concatenate(values), np.concatenate(labels)
    index = {}  # image id -> number, in order of first appearance
    inverse = np.fromiter((index.setdefault(image_id, len(index)) for image_id in ids), np.int64, len(ids))
    order = np.argsort(inverse, kind="stable")  # grouped by image, file order kept inside
    bounds = np.searchsorted(inverse[order], np.arange(len(index) + 1))
    detections = {}
    for image_id, u in index.items():
        rows = order[bounds[u]:bounds[u + 1]]
        detections[image_id] = {"boxes": values[rows, 1:], "scores": values[rows, 0], "labels": labels[rows]}
    return detections


def _all_floats(tokens):
    try:
        [float(t) for t in tokens]
    except ValueError:
        return False
    return True
