"""COCO detection metrics: pycocotools COCOeval over our detections, results JSON files (e.g. test-dev).

Box format at this edge (everything else in the library is normalized [ymin, xmin, ymax, xmax]): COCO's
absolute [x, y, width, height] with x = xmin * image width (continuous coordinates, no +1).
"""

import collections
import contextlib
import io
import json
import math
import os

import numpy as np

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

def normalized_to_coco_xywh(boxes, image_size):
    """Normalized [ymin, xmin, ymax, xmax] [N, 4] + (height, width) -> float64 [N, 4] absolute COCO xywh."""
    boxes = checked_array(boxes, np.float64, (None, 4), "boxes")
    height, width = image_height_width(image_size)
    x, y = boxes[:, 1] * width, boxes[:, 0] * height
    return np.stack([x, y, boxes[:, 3] * width - x, boxes[:, 2] * height - y], 1)


def coco_evaluate(coco_gt, records, image_ids=None, category_names=None):
    """Runs pycocotools COCOeval (bbox) and names its 12 summary numbers.

    Args:
      coco_gt: a pycocotools `COCO` with the ground truth.
      records: COCO results [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}].
      image_ids: ids to evaluate; None: every ground truth image (the official protocol).
      category_names: {category id: name} of the categories to report one by one; None: no per-class part.

    Returns:
      {name: float} for COCO_STAT_NAMES (-1 where the ground truth has no box of that size), plus with
      category_names ``"per_class": {name: {"AP", "AP50", "AP75", "num_gt"}}`` (see `per_class_ap`).
    """
    from pycocotools import cocoeval  # lazy: VOC users need not load pycocotools

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its own table
        if records:
            coco_dt = coco_gt.loadRes([dict(r) for r in records])  # loadRes writes into the dicts
        else:  # loadRes fails on []; no detections must still score 0
            coco_dt = _coco_api_from(dict(coco_gt.dataset, annotations=[]))
        coco_eval = cocoeval.COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, coco_eval.stats)}
    if category_names is not None:
        stats["per_class"] = per_class_ap(coco_eval, category_names)
    return stats


def per_class_ap(coco_eval, category_names):
    """Per-category AP, AP50 and AP75 of an accumulated COCOeval (area "all", 100 detections per image).

    Each is the mean of the category's slice of ``coco_eval.eval["precision"]`` [T, R, K, A, M] over the
    IoU thresholds (AP) or at IoU 0.5 / 0.75, leaving out -1 entries as ``COCOeval.summarize`` does, so it
    equals the AP that pycocotools reports with ``params.catIds = [category]``.

    Args:
      coco_eval: a pycocotools ``COCOeval`` after ``evaluate()`` and ``accumulate()``.
      category_names: {category id: name}, in the order of the result.

    Returns:
      {name: {"AP", "AP50", "AP75": float (nan without ground truth), "num_gt": int (non-crowd boxes in
      the evaluated images)}}.
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"), params.maxDets.index(100)]
    at = {"AP": slice(None), "AP50": np.flatnonzero(params.iouThrs == 0.5),
          "AP75": np.flatnonzero(params.iouThrs == 0.75)}
    gt_ids = coco_eval.cocoGt.getAnnIds(imgIds=params.imgIds, iscrowd=False)
    num_gt = collections.Counter(a["category_id"] for a in coco_eval.cocoGt.loadAnns(gt_ids))
    per_class = {}
    for category_id, name in category_names.items():
        k = list(params.catIds).index(category_id)
        values = {key: precision[t, :, k] for key, t in at.items()}
        per_class[name] = {key: _mean_valid(v) for key, v in values.items()}
        per_class[name]["num_gt"] = int(num_gt[category_id])
    return per_class


def _mean_valid(precision):
    """Mean of the entries > -1 (COCOeval's "not evaluated" marker); nan when there is none."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else math.nan


def coco_evaluate_json(instances_json, results_json, per_class=False):
    """Scores a COCO results JSON file against an instances JSON file, on all its images.

    With ``per_class``, adds ``"per_class"`` (see `coco_evaluate`) named by the instances file's category
    names (the id where a category has none), in category id order.

    Raises:
      FileNotFoundError / ValueError: naming the file that is missing, not JSON, or malformed.
    """
    coco_gt = load_coco_ground_truth(instances_json)
    records = _read_json(results_json)
    if not isinstance(records, list):
        raise ValueError(f"{results_json}: expected a JSON list of results, got {type(records).__name__}")
    known = set(coco_gt.getImgIds())
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and {"image_id", "category_id", "bbox", "score"} <= set(r) and len(r["bbox"]) == 4):
            raise ValueError(f"{results_json}: result {i} is not {{image_id, category_id, bbox[4], score}}: {r!s:.200}")
        if r["image_id"] not in known:
            raise ValueError(f"{results_json}: result {i} has image_id {r['image_id']!r}, not in {instances_json}")
    names = None
    if per_class:
        names = {c["id"]: str(c.get("name", c["id"])) for c in coco_gt.loadCats(sorted(coco_gt.getCatIds()))}
    return coco_evaluate(coco_gt, records, category_names=names)


def load_coco_ground_truth(instances_json):
    """Loads an instances JSON into a pycocotools `COCO`, naming the file on errors."""
    dataset = _read_json(instances_json)
    if not (isinstance(dataset, dict) and {"images", "annotations", "categories"} <= set(dataset)):
        raise ValueError(f"{instances_json}: not a COCO instances file (needs images, annotations, categories)")
    return _coco_api_from(dataset)


class CocoEvaluator:
    """Collects detections as COCO results and scores them with pycocotools, over the added images.

    Ground truth comes from an instances JSON (use the official one: its segment areas count), or else from
    the gt_boxes/gt_labels/gt_iscrowd given to `add` (area = box area). Without any ground truth
    (test-dev), `records` still gives the results to write with `write_coco_results`.
    """

    def __init__(self, category_ids=None, instances_json=None, class_names=None):
        """Args:
          category_ids: COCO category id of each label 0..C-1; default: the instances JSON's ids, sorted.
          instances_json: path of the ground truth instances JSON, or None.
          class_names: C names in label order: `result` then adds per-class APs under these names.
        """
        self._coco_gt = None if instances_json is None else load_coco_ground_truth(instances_json)
        if category_ids is None:
            if self._coco_gt is None:
                raise ValueError("CocoEvaluator needs category_ids or instances_json")
            category_ids = sorted(self._coco_gt.getCatIds())
        self.category_ids = [int(c) for c in category_ids]
        if class_names is not None and len(class_names) != len(self.category_ids):
            raise ValueError(f"{len(class_names)} class names for {len(self.category_ids)} category ids")
        self.class_names = None if class_names is None else tuple(class_names)
        self.records, self._images, self._annotations, self._num_without_gt = [], {}, [], 0

    def add(self, image_id, det_boxes, det_scores, det_labels, image_size, gt_boxes=None, gt_labels=None,
            gt_iscrowd=None):
        """Adds one image (unpadded arrays).

        Args:
          image_id: the COCO image id (int).
          det_boxes: float [M, 4] normalized yxyx.  det_scores: float [M].  det_labels: int [M] in 0..C-1.
          image_size: (height, width) of the original image in pixels.
          gt_boxes: float [N, 4] normalized yxyx, only without an instances JSON.  gt_labels: int [N].
          gt_iscrowd: bool [N] crowd regions (a detection on one is neither a TP nor an FP); default all False.
        """
        image_id = int(image_id)
        if image_id in self._images:
            raise ValueError(f"image {image_id} added twice")
        if gt_boxes is not None and self._coco_gt is not None:
            raise ValueError(f"image {image_id}: gt_boxes given, but the ground truth is the instances JSON")
        height, width = image_height_width(image_size)
        det_xywh = normalized_to_coco_xywh(det_boxes, image_size)
        det_scores = checked_array(det_scores, np.float64, (len(det_xywh),), f"image {image_id}: det_scores")
        det_categories = self._category(det_labels, len(det_xywh), image_id)
        if gt_boxes is not None:
            gt_xywh = normalized_to_coco_xywh(gt_boxes, image_size)
            gt_categories = self._category(gt_labels, len(gt_xywh), image_id)
            gt_iscrowd = checked_array(np.zeros(len(gt_xywh), bool) if gt_iscrowd is None else gt_iscrowd, bool,
                                   (len(gt_xywh),), f"image {image_id}: gt_iscrowd")
        # Checked above; from here on nothing fails halfway through an image.
        self._images[image_id] = {"id": image_id, "height": height, "width": width}
        for box, label, score in zip(det_xywh.tolist(), det_categories, det_scores.tolist()):
            self.records.append({"image_id": image_id, "category_id": label, "bbox": box, "score": float(score)})
        self._num_without_gt += gt_boxes is None
        if gt_boxes is not None:
            for box, label, crowd in zip(gt_xywh.tolist(), gt_categories, gt_iscrowd.tolist()):
                self._annotations.append({"id": len(self._annotations) + 1, "image_id": image_id, "bbox": box,
                                          "category_id": label, "area": box[2] * box[3], "iscrowd": int(crowd)})

    def result(self):
        """Returns the 12 COCO stats by name (COCO_STAT_NAMES) over the added images.

        With ``class_names``, also ``"per_class": {name: {"AP", "AP50", "AP75", "num_gt"}}`` in label order
        (`per_class_ap`).
        """
        coco_gt = self._coco_gt
        if coco_gt is None:
            if self._num_without_gt:
                raise ValueError(f"{self._num_without_gt} images were added without gt_boxes and there is no "
                                 "instances_json; write `records` with write_coco_results instead")
            coco_gt = _coco_api_from({"images": list(self._images.values()), "annotations": self._annotations,
                                      "categories": [{"id": c} for c in self.category_ids]})
        missing = sorted(set(self._images) - set(coco_gt.getImgIds()))
        if missing:
            raise ValueError(f"{len(missing)} added image ids are not in the ground truth, e.g. {missing[:3]}")
        names = None if self.class_names is None else dict(zip(self.category_ids, self.class_names))
        return coco_evaluate(coco_gt, self.records, list(self._images), category_names=names)

    def _category(self, labels, num_boxes, image_id):
        labels = checked_array(labels, np.int64, (num_boxes,), f"image {image_id}: labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.category_ids)):
            raise ValueError(f"image {image_id}: labels must be in 0..{len(self.category_ids) - 1}, got {labels}")
        return [self.category_ids[label] for label in labels]


def write_coco_results(path, records):
    """Writes COCO results [{"image_id", "category_id", "bbox", "score"}] as JSON (e.g. test-dev); returns path."""
    _make_parent(path)
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _coco_api_from(dataset):
    from pycocotools import coco as coco_api

    coco = coco_api.COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def checked_array(value, dtype, shape, what):
    """np.asarray(value, dtype) checked against shape (None = any size); [0] arrays may stand for [0, 4]."""
    array = np.asarray(value, dtype)
    if array.size == 0 and len(shape) == 2:
        array = array.reshape(0, shape[1])
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        raise ValueError(f"{what}: expected shape {tuple('N' if s is None else s for s in shape)}, got {array.shape}")
    return array


def image_height_width(image_size):
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be (height, width) > 0, got {image_size}")
    return height, width


def _read_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err


def _make_parent(path):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
