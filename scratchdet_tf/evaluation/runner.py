"""Model evaluation: run a detector over an evaluation source, then score it (VOC, COCO) or write server files.

Two ways in:
- ``evaluate(cfg, model, anchors)``: a Keras model, batched through the evaluation pipeline
  (``data.pipeline.make_dataset``), or through the multi-scale scheme (``multiscale``).
- ``evaluate_predict_fn(predict_fn, source)``: any predict function that maps uint8 original images
  [B, H, W, 3] to ``{"boxes": [B, N, 4] normalized yxyx, "scores": [B, N], "classes": [B, N] labels 0..C-1,
  "num_detections": [B]}`` (``postprocess.detect``'s outputs). ``model_predict_fn`` and
  ``predictor.load_predict_fn`` (SavedModel or .tflite) make one. It is called one image at a
  time (B = 1), since originals differ in size.

Scoring follows ``eval.metric``: voc07 and voc12 give both VOC APs (11-point and area; the table shows the
metric's own), coco gives the 12 COCOeval stats; both also per class, printed as a table after the paper's
one-line table. With an output folder the metrics go to ``metrics.json``, the per-class table to
``per_class.txt``, and ``write_plots`` draws ``pr_curves.png`` and ``confusion_matrix.png`` there. A source
with no ground-truth box at all (VOC2012 test, COCO test-dev) is not scored; its detections are written for
the evaluation servers instead: comp4 files ``results/VOC2012/Main/comp4_det_test_<class>.txt`` or
``detections_test-dev2017_scratchdet_results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
import tensorflow as tf

from scratchdet_tf import run_dir, visualize
from scratchdet_tf.boxes import postprocess
from scratchdet_tf.data import augment, pipeline, readers
from scratchdet_tf.data import class_names as class_names_lib
from scratchdet_tf.evaluation import coco_metric, confusion, devkit, multiscale, report, voc_metric

PredictFn = Callable[[np.ndarray], Dict[str, np.ndarray]]

METRICS_FILE = "metrics.json"
VOC_RESULTS_DIR = os.path.join("results", "VOC2012", "Main")  # the layout the VOC server's tar expects
VOC_RESULTS_IMAGE_SET = "test"
COCO_RESULTS_FILE = "detections_test-dev2017_scratchdet_results.json"  # the COCO server's naming
PER_CLASS_FILE = "per_class.txt"
PR_CURVES_FILE = "pr_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
CONFUSION_SCORE_THRESHOLD = 0.25
_GT_KEYS = ("image_id", "original_size", "gt_boxes", "gt_labels", "gt_difficult", "num_boxes")


@dataclasses.dataclass
class _Image:
    """One evaluated image: ground truth and detections, unpadded, normalized yxyx."""

    image_id: str
    image_size: tuple  # (height, width) of the original
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray


def evaluate(cfg, model, anchors, *, source: str | None = None, num_images: int | None = None,
             multi_scale: bool | None = None, output_dir: str | None = None, step: int | None = None,
             method: str | None = None) -> dict:
    """Evaluates a Keras detector on ``source`` (default ``cfg.data.val_source``).

    Single-scale: the evaluation pipeline in batches of ``cfg.eval.batch_size``, the model in a tf.function
    (training=False) and ``postprocess.detect`` with the ``cfg.eval`` thresholds. Multi-scale: the
    ScratchDet300+ scheme of ``multiscale`` (its priors come from ``cfg``; ``anchors`` is not used).

    Args:
      cfg: ``config.Config`` of the run.
      model: Keras model from ``ssd.build_model(cfg.model, cfg.anchors)``.
      anchors: float32 [A, 4] its priors.
      source: data source URI.
      num_images: evaluate only the first n images; None: ``cfg.eval.num_images`` (0 = all).
      multi_scale: None: ``cfg.eval.multi_scale``.
      output_dir: where ``metrics.json``, ``per_class.txt`` and the figures (or a test set's results files)
        go; None writes no files.
      step: training step, recorded in the metrics.
      method: row name in the printed table; default the model's name (+ "+" when multi-scale).

    Returns:
      The metrics dict (see ``evaluate_predict_fn``).

    Raises:
      ValueError: the source's classes do not match the model, or it yields no image.
    """
    source = source or cfg.data.val_source
    num_images = cfg.eval.num_images if num_images is None else num_images
    multi_scale = cfg.eval.multi_scale if multi_scale is None else multi_scale
    method = method or model.name + ("+" if multi_scale else "")
    # The evaluation split's info (source_info would look at a shapes: source's train split).
    # The run's class list labels the evaluation data as it labelled the training data (a VOC devkit's own
    # list could order them differently).
    _, info = readers.read(source, tfds_data_dir=cfg.data.tfds_data_dir, training=False, decode=False,
                           class_names=cfg.data.class_names)
    if info.num_classes != cfg.model.num_classes:
        raise ValueError(f"{source!r} has {info.num_classes} classes ({', '.join(info.class_names)}) but the "
                         f"model predicts {cfg.model.num_classes} (--model.num_classes)")
    scoring = dict(metric=cfg.eval.metric, output_dir=output_dir, step=step, method=method)
    if multi_scale:
        return evaluate_predict_fn(multiscale.make_predict_fn(cfg, model), source, num_images=num_images,
                                   tfds_data_dir=cfg.data.tfds_data_dir, class_names=cfg.data.class_names,
                                   **scoring)

    start = time.perf_counter()
    data_cfg = dataclasses.replace(cfg.data, val_source=source, deterministic=True)  # file order: reproducible ties
    dataset = pipeline.make_dataset(data_cfg, anchors, training=False, image_size=cfg.model.image_size,
                                    batch_size=cfg.eval.batch_size, variances=cfg.anchors.variances)
    detect = _detect_fn(model, anchors, cfg.model.image_size, **detect_settings(cfg))
    images: List[_Image] = []
    for batch in dataset:
        det = {k: v.numpy() for k, v in detect(batch["image"]).items()}
        batch = {k: batch[k].numpy() for k in _GT_KEYS}
        for i in range(len(det["num_detections"])):
            if num_images and len(images) >= num_images:
                break
            k, n = int(det["num_detections"][i]), int(batch["num_boxes"][i])
            images.append(_Image(batch["image_id"][i].decode(), tuple(int(v) for v in batch["original_size"][i]),
                                 batch["gt_boxes"][i, :n], batch["gt_labels"][i, :n], batch["gt_difficult"][i, :n],
                                 det["boxes"][i, :k], det["scores"][i, :k], det["classes"][i, :k]))
        if num_images and len(images) >= num_images:
            break
    _log_speed(len(images), start)
    return _score(images, info, source, **scoring)


def evaluate_predict_fn(predict_fn: PredictFn, source: str, *, metric: str = "voc07", tfds_data_dir: str = "",
                        num_images: int = 0, output_dir: str | None = None, step: int | None = None,
                        method: str = "ours", class_names: Sequence[str] = ()) -> dict:
    """Evaluates a predict function (uint8 original images -> detections) on ``source``, image by image.

    Args:
      predict_fn: see the module docstring; called with uint8 [1, H, W, 3].
      source: data source URI.
      metric: "voc07" | "voc12" | "coco".
      tfds_data_dir: TFDS data directory for ``tfds:`` sources.
      num_images: evaluate only the first n images (0 = all).
      output_dir: where ``metrics.json``, ``per_class.txt`` and the figures (or a test set's results files)
        go; None writes no files.
      step: training step, recorded in the metrics.
      method: row name in the printed table.
      class_names: the model's class names (label order), if known: they must be the source's
        (``class_1`` .. ``class_C``, the export's names for unnamed classes, are not checked).

    Returns:
      VOC: ``{"mAP_07", "mAP_area", "per_class": {name: {"ap_07", "ap_area", "num_gt"}}, "num_images"}``;
      COCO: the 12 stats by name (``coco_metric.COCO_STAT_NAMES``), ``"per_class": {name: {"AP", "AP50",
      "AP75", "num_gt"}}`` and ``"num_images"``; a test set without ground truth: ``{"num_images",
      "results": <the folder or file written>}``. Plus ``"step"`` if given, and with ``output_dir`` (and
      ground truth) ``"per_class_table"`` (the path of ``per_class.txt``) and ``"plots"`` (``write_plots``'
      PNG paths).

    Raises:
      ValueError: the source yields no image, a test set needs ``output_dir``, or the model's class
        names differ from the source's.
    """
    start = time.perf_counter()
    unnamed = class_names_lib.unnamed(len(class_names))  # an export's names when none were known
    fixed = tuple(class_names) if tuple(class_names) != unnamed else ()  # label the data in the model's order
    dataset, info = readers.read(source, tfds_data_dir=tfds_data_dir, training=False, class_names=fixed)
    if class_names and tuple(class_names) not in (tuple(info.class_names), unnamed):
        raise ValueError(f"the model detects {list(class_names)} but {source!r} has classes {list(info.class_names)}")
    if num_images:
        dataset = dataset.take(num_images)
    images: List[_Image] = []
    for example in dataset.prefetch(2):
        pixels = example["image"].numpy()
        det = predict_fn(pixels[None])
        k = int(det["num_detections"][0])
        images.append(_Image(example["image_id"].numpy().decode(), pixels.shape[:2], example["boxes"].numpy(),
                             example["labels"].numpy(), example["difficult"].numpy(),
                             np.asarray(det["boxes"][0][:k]), np.asarray(det["scores"][0][:k]),
                             np.asarray(det["classes"][0][:k]).astype(np.int64)))
    _log_speed(len(images), start)
    return _score(images, info, source, metric=metric, output_dir=output_dir, step=step, method=method)


def detect_settings(cfg) -> dict:
    """``postprocess.detect`` keyword arguments of a run (``cfg.eval`` thresholds, box-coder variances)."""
    return dict(score_threshold=cfg.eval.score_threshold, pre_nms_top_k=cfg.eval.pre_nms_top_k,
                nms_iou_threshold=cfg.eval.nms_iou_threshold, max_detections=cfg.eval.max_detections,
                variances=tuple(cfg.anchors.variances))


def _detect_fn(model, anchors, image_size: int, **settings):
    """tf.function: mean-subtracted images float32 [B, S, S, 3] -> ``postprocess.detect`` outputs."""
    priors = tf.constant(np.asarray(anchors, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def detect(images):
        outputs = model(images, training=False)
        return postprocess.detect(outputs["cls_logits"], outputs["box_deltas"], priors, **settings)

    return detect


def model_predict_fn(cfg, model, anchors) -> PredictFn:
    """Single-scale predict function of a Keras model on uint8 originals (the evaluation transform + detect).

    Args:
      cfg: ``config.Config`` of the run (input size, mean, ``eval`` thresholds).
      model: Keras model.
      anchors: float32 [A, 4] its priors.
    """
    detect = _detect_fn(model, anchors, cfg.model.image_size, **detect_settings(cfg))

    def predict(images):
        batch = tf.stack([augment.transform_eval(tf.convert_to_tensor(image, tf.uint8), image_size=cfg.model.image_size,
                                                 mean_rgb=cfg.data.mean_rgb) for image in images])
        return {k: v.numpy() for k, v in detect(batch).items()}

    return predict


def evaluate_checkpoints(cfg, model_dir: str, *, source: str | None = None, output_dir: str | None = None,
                         timeout: float = 3600.0, min_interval_secs: float = 0.0) -> dict | None:
    """Evaluates every new checkpoint of a training run as it appears (continuous evaluation).

    Metrics go to TensorBoard in ``<model_dir>/eval`` (``eval/mAP_07``, ``eval/AP`` ... at the checkpoint's
    step) and to ``<output_dir>/metrics.json``. Stops after the checkpoint at ``cfg.train.max_steps`` or
    when no new checkpoint came for ``timeout`` seconds. A checkpoint deleted before it is read (the
    trainer keeps only the newest few) is skipped.

    Args:
      cfg: ``config.Config`` of the run (with any evaluation overrides).
      model_dir: the training run's folder.
      source: data source URI (default ``cfg.data.val_source``).
      output_dir: default ``<model_dir>/eval``.
      timeout: seconds to wait for a new checkpoint.
      min_interval_secs: minimum seconds between two evaluations.

    Returns:
      The metrics of the last checkpoint evaluated (with ``"step"``), or None if there was none.
    """
    output_dir = output_dir or os.path.join(model_dir, "eval")
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    restored, metrics = None, None
    for prefix in tf.train.checkpoints_iterator(model_dir, min_interval_secs=min_interval_secs, timeout=timeout):
        try:
            if restored is None:
                restored = run_dir.restore_model(model_dir, prefix, cfg)
            else:
                tf.train.Checkpoint(model=restored.model).read(prefix).expect_partial()
        except (tf.errors.NotFoundError, tf.errors.DataLossError) as err:
            logging.warning("skipping checkpoint %s: %s", prefix, err)
            continue
        step = run_dir.checkpoint_step(prefix)
        metrics = evaluate(cfg, restored.model, restored.anchors, source=source, output_dir=output_dir, step=step)
        write_summaries(writer, metrics, step)
        if step >= cfg.train.max_steps:
            break
    writer.close()
    return metrics


def evaluate_during_training(cfg, model, anchors, writer, step: int, num_drawn: int = 4,
                             output_dir: str | None = None) -> dict:
    """Periodic evaluation of a training run: ``evaluate`` on ``cfg.data.val_source``, its metrics and a few
    validation images with their drawn detections (score >= 0.3) written to TensorBoard.

    Args:
      output_dir: where ``metrics.json``, the per-class table and the plots go (the newest evaluation's);
        None writes no files.

    Returns:
      ``evaluate``'s metrics dict.
    """
    metrics = evaluate(cfg, model, anchors, step=step, output_dir=output_dir)
    write_summaries(writer, metrics, step)
    predict = model_predict_fn(cfg, model, anchors)
    ds, info = readers.read(cfg.data.val_source, tfds_data_dir=cfg.data.tfds_data_dir, training=False,
                            class_names=cfg.data.class_names)
    with writer.as_default(step=step):
        for i, example in enumerate(ds.take(num_drawn)):
            image = example["image"].numpy()
            drawn = visualize.draw_result(image, predict(image[None]), info.class_names, index=0)
            tf.summary.image(f"detections/{i}", drawn[None], step=step)
    writer.flush()
    return metrics


def write_summaries(writer, metrics: dict, step: int) -> None:
    """Writes a metrics dict's numbers as TensorBoard scalars ``eval/<name>``, per class ``eval/AP_07/<class>``
    and ``eval/AP_area/<class>`` (VOC) or ``eval/AP/<class>`` (COCO)."""
    with writer.as_default(step=step):
        for name, value in metrics.items():
            if name in ("step", "num_images") or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                tf.summary.scalar(f"eval/{name}", value)
        for class_name, values in metrics.get("per_class", {}).items():
            for key, tag in (("ap_07", "AP_07"), ("ap_area", "AP_area"), ("AP", "AP")):
                if key in values and math.isfinite(values[key]):
                    tf.summary.scalar(f"eval/{tag}/{class_name}", values[key])
    writer.flush()


def _score(images: List[_Image], info: readers.SourceInfo, source: str, *, metric: str,
           output_dir: str | None, step: int | None, method: str) -> dict:
    """Scores collected images (or writes a test set's results files), prints the tables, writes metrics.json.

    With ``output_dir`` and ground truth, also writes ``per_class.txt`` (the per-class table) and the
    figures of ``write_plots`` there, listed in the metrics as ``"per_class_table"`` and ``"plots"``.
    """
    if not images:
        raise ValueError(f"{source!r}: no images to evaluate")
    if sum(len(image.gt_labels) for image in images) == 0:
        metrics = {"results": _write_test_results(images, info, source, metric, output_dir)}
        print(f"{source}: no ground truth (a test set); wrote the {len(images)} images' detections to "
              f"{metrics['results']}")
    else:
        if metric == "coco":
            metrics = _coco_metrics(images, info, source)
            print(report.format_coco_table(metrics, method=method))
        else:
            evaluator = voc_metric.VocEvaluator(info.class_names)
            for im in images:
                evaluator.add(im.image_id, im.gt_boxes, im.gt_labels, im.gt_difficult, im.det_boxes, im.det_scores,
                              im.det_labels, im.image_size)
            metrics = evaluator.result()
            print(report.format_voc_table(metrics, use_07_metric=metric == "voc07", method=method))
        table = report.format_per_class_table(metrics, metric=metric)
        print(table)
        if output_dir:
            metrics["per_class_table"] = _write_text(os.path.join(output_dir, PER_CLASS_FILE), table)
            try:
                metrics["plots"] = write_plots(images, info.class_names, output_dir, metric=metric)
            except Exception as err:  # noqa: BLE001 - a figure must never cost the metrics (or a training run)
                logging.warning("could not draw the evaluation plots into %s: %s", output_dir, err)
    metrics["num_images"] = len(images)
    if step is not None:
        metrics["step"] = int(step)
    if output_dir:
        report.write_metrics_json(os.path.join(output_dir, METRICS_FILE), metrics)
    return metrics


def write_plots(images: Sequence, class_names: Sequence[str], output_dir: str, *, metric: str = "voc07",
                score_threshold: float = CONFUSION_SCORE_THRESHOLD) -> List[str]:
    """Writes the evaluation figures of scored images into ``output_dir``; returns their paths.

    ``pr_curves.png``: per-class precision-recall curves under the VOC rules at IoU 0.5 (difficult or crowd
    boxes ignored) for every metric, COCO included (its AP averages IoU 0.5..0.95; the figure title says
    which matching it shows), with the metric's VOC AP (11-point for voc07, else area) per panel.
    ``confusion_matrix.png``: ``confusion.confusion_matrix`` counts of the detections scoring >=
    ``score_threshold`` (IoU 0.5), rows predicted, columns true, background last.

    Args:
      images: objects with ``image_id``, ``image_size``, ``gt_boxes``, ``gt_labels``, ``gt_difficult``,
        ``det_boxes``, ``det_scores``, ``det_labels`` (unpadded, normalized yxyx; the runner's images).
      class_names: C names in label order.
      output_dir: the folder (created).
      metric: "voc07" | "voc12" | "coco": which AP the curves' panels show.
      score_threshold: detections below it are left out of the confusion matrix.

    Returns:
      [``<output_dir>/pr_curves.png``, ``<output_dir>/confusion_matrix.png``].
    """
    from scratchdet_tf import plots  # lazy: matplotlib takes seconds to import

    evaluator = voc_metric.VocEvaluator(class_names)
    for im in images:
        evaluator.add(im.image_id, im.gt_boxes, im.gt_labels, im.gt_difficult, im.det_boxes, im.det_scores,
                      im.det_labels, im.image_size)
    ap_key = "ap_07" if metric == "voc07" else "ap_area"
    aps = {name: v[ap_key] for name, v in evaluator.result()["per_class"].items()}
    ap_name = "11-point" if metric == "voc07" else "area"
    suffix = ", COCO's AP averages IoU 0.5:0.95" if metric == "coco" else ""
    pr_path = plots.plot_pr_curves(
        evaluator.curves(), os.path.join(output_dir, PR_CURVES_FILE), aps=aps,
        title=f"precision-recall, VOC matching at IoU 0.5 ({ap_name} AP{suffix}), {len(images)} images")
    matrix = confusion.confusion_matrix(images, len(class_names), score_threshold=score_threshold)
    cm_path = plots.plot_confusion_matrix(
        matrix, class_names, os.path.join(output_dir, CONFUSION_FILE),
        title=f"confusion: score >= {score_threshold:g}, IoU 0.5, {len(images)} images")
    return [pr_path, cm_path]


def _write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def _coco_metrics(images: List[_Image], info: readers.SourceInfo, source: str) -> dict:
    """COCOeval stats and per-class APs, against the source's instances JSON when it has one (official areas),
    else the GT seen (then image ids that are not all integers are numbered 1..N in order)."""
    category_ids = info.category_ids or tuple(range(1, info.num_classes + 1))
    instances_json = readers.instances_json(source)
    evaluator = coco_metric.CocoEvaluator(category_ids, instances_json=instances_json, class_names=info.class_names)
    if instances_json or all(_is_integer(im.image_id) for im in images):
        image_ids = [_coco_image_id(im.image_id, source) for im in images]
    else:  # ids only need to be distinct ints here: nothing is matched against an instances JSON
        image_ids = range(1, len(images) + 1)
    for im, image_id in zip(images, image_ids):
        if instances_json:
            evaluator.add(image_id, im.det_boxes, im.det_scores, im.det_labels, im.image_size)
        else:  # crowd boxes arrive as "difficult" (readers)
            evaluator.add(image_id, im.det_boxes, im.det_scores, im.det_labels, im.image_size,
                          gt_boxes=im.gt_boxes, gt_labels=im.gt_labels, gt_iscrowd=im.gt_difficult)
    return evaluator.result()


def _is_integer(image_id: str) -> bool:
    try:
        int(image_id)
    except ValueError:
        return False
    return True


def _coco_image_id(image_id: str, source: str) -> int:
    try:
        return int(image_id)
    except ValueError:
        raise ValueError(f"{source!r}: COCO evaluation needs integer image ids, got {image_id!r}") from None


def _write_test_results(images: List[_Image], info: readers.SourceInfo, source: str, metric: str,
                        output_dir: str | None) -> str:
    """Writes the evaluation-server files of a test set; returns the folder (VOC) or file (COCO)."""
    if not output_dir:
        raise ValueError(f"{source!r} has no ground truth boxes (a test set): give an output folder for the "
                         "results files")
    if metric == "coco":
        evaluator = coco_metric.CocoEvaluator(info.category_ids or tuple(range(1, info.num_classes + 1)))
        for im in images:
            evaluator.add(_coco_image_id(im.image_id, source), im.det_boxes, im.det_scores, im.det_labels,
                          im.image_size)
        return coco_metric.write_coco_results(os.path.join(output_dir, COCO_RESULTS_FILE), evaluator.records)
    folder = os.path.join(output_dir, VOC_RESULTS_DIR)
    detections = {im.image_id: {"boxes": voc_metric.normalized_to_voc_pixels(im.det_boxes, im.image_size),
                                "scores": im.det_scores, "labels": im.det_labels} for im in images}
    devkit.write_comp4(folder, VOC_RESULTS_IMAGE_SET, info.class_names, detections)
    return folder


def _log_speed(num_images: int, start: float) -> None:
    seconds = time.perf_counter() - start
    print(f"evaluated {num_images} images in {seconds:.1f} s ({num_images / max(seconds, 1e-9):.1f} images/s)")
