"""Detection sources selected by URI, all yielding the data contract.

Every source yields ``{"image": uint8 [H, W, 3], "boxes": float32 [N, 4] normalized
[ymin, xmin, ymax, xmax], "labels": int32 [N] in 0..C-1, "difficult": bool [N],
"image_id": string []}``. ``image_id`` is a string for every source so that joined
sources share one dtype: the VOC file stem (``"000005"``), the COCO id in decimal
(``"397133"``), the YOLO image path below the dataset root without extension
(``"images/val/000001"``).

URIs (several are joined with ``+`` before a scheme; a ``+`` inside a TFDS split is a
split union):
- ``tfds:voc/2007:train+validation``, ``tfds:coco/2017:train``: TensorFlow Datasets already
  prepared in ``tfds_data_dir`` (nothing is downloaded). Boxes are repaired in the graph
  (coordinates sorted, clipped, empty boxes dropped; counted in ``num_fixed``).
- ``voc:<VOCdevkit/VOC2007>:<image set>``: a raw devkit folder (PASCAL's or any other
  classes: see class names below).
- ``coco:<instances.json>:<image dir>``: a COCO JSON file and its images.
- ``shapes:<dir>[:train|:val]``: the synthetic dataset written by ``tools/make_shapes.py``,
  read with the COCO reader from ``<dir>/<split>/instances.json``; without a suffix the
  split is ``train`` for training and ``val`` otherwise.
- ``yolo:<data.yaml>[:train|:val|:test]``: an Ultralytics YOLO dataset (see ``yolo``);
  without a suffix the split is ``train`` for training and ``val`` otherwise.

Class names: ``class_names`` (``--data.class_names``) empty takes each source's own: the COCO
categories, the YOLO ``names``, the TFDS label names, a VOC devkit's ``labelmap.txt`` or the names
in its XML (``annotations.voc_class_names``; PASCAL's 20 when the devkit has no other class).
Given, it is the VOC label order (an object of another class is an error naming its XML file), and
must equal the names every other source carries.

COCO crowd boxes (``iscrowd``/``is_crowd``) are dropped for training and kept with
``difficult=True`` for evaluation. Annotations (VOC, COCO, shapes) are parsed once in
Python (see ``annotations``); images are read and decoded in tf.data.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from scratchdet_tf.data import annotations, images, yolo

SCHEMES = ("tfds", "voc", "coco", "shapes", "yolo")
# Category ids of the 80 COCO 2017 classes; TFDS ``coco/2017`` labels index this tuple.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a source is, beyond its elements.

    Attributes:
      class_names: C names in label order.
      category_ids: COCO category id of each label (``category_ids[label]``); () for VOC.
      num_examples: images in the dataset (this shard), -1 if unknown.
      problems: one-line summary of annotation problems found at load time ("" if none).
      num_problems: their count.
      num_boxes: objects annotated in the whole source (all shards), -1 if unknown (TFDS parts).
    """

    class_names: Tuple[str, ...]
    category_ids: Tuple[int, ...] = ()
    num_examples: int = -1
    problems: str = ""
    num_problems: int = 0
    num_boxes: int = -1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_of(self, category_id: int) -> int:
        """The label 0..C-1 of a COCO category id (the inverse of ``category_ids``)."""
        if category_id not in self.category_ids:
            raise ValueError(f"category id {category_id} is not one of {list(self.category_ids)}")
        return self.category_ids.index(category_id)


def split_sources(source: str) -> List[str]:
    """Splits a joined URI on every ``+`` that is followed by a scheme."""
    parts = re.split(r"\+(?=(?:" + "|".join(SCHEMES) + "):)", source)
    for part in parts:
        if part.split(":", 1)[0] not in SCHEMES or ":" not in part:
            raise ValueError(f"data source {part!r} (in {source!r}) must start with one of "
                             f"{', '.join(s + ':' for s in SCHEMES)}")
    return parts


def _parse(part: str, training: bool):
    """(scheme, arguments) of one URI."""
    scheme, rest = part.split(":", 1)
    if scheme == "tfds":
        name, _, split = rest.partition(":")
        if not split:
            raise ValueError(f"data source {part!r}: expected tfds:<name>:<split>")
        return scheme, (name, split)
    if scheme == "coco":
        json_path, sep, image_dir = rest.partition(".json:")
        if not sep:
            raise ValueError(f"data source {part!r}: expected coco:<instances.json>:<image dir>")
        return scheme, (json_path + ".json", image_dir)
    if scheme == "voc":
        devkit, sep, image_set = rest.rpartition(":")
        if not sep:
            raise ValueError(f"data source {part!r}: expected voc:<VOCdevkit/VOC2007>:<image set>")
        return scheme, (devkit, image_set)
    root, sep, split = rest.rpartition(":")
    if not sep or split not in (yolo.SPLITS if scheme == "yolo" else ("train", "val")):
        root, split = rest, ("train" if training else "val")
    if scheme == "yolo":
        return scheme, (root, split)
    return "coco", (os.path.join(root, split, "instances.json"), os.path.join(root, split))


def instances_json(source: str) -> str | None:
    """The COCO instances JSON of a single ``coco:`` or ``shapes:`` source (its evaluation split), else None."""
    parts = split_sources(source)
    if len(parts) != 1 or parts[0].split(":", 1)[0] not in ("coco", "shapes"):
        return None
    _, (json_path, _) = _parse(parts[0], training=False)
    return json_path


def source_info(source: str, *, tfds_data_dir: str = "", class_names: Sequence[str] = ()) -> SourceInfo:
    """Class names (and COCO category ids) of a source without reading its images.

    Args:
      source: URI, possibly joined.
      tfds_data_dir: TFDS data directory.
      class_names: ``--data.class_names``: the VOC label order; other sources' names must equal it.
        Empty: each source's own (see the module doc).

    Returns:
      ``SourceInfo`` with ``num_examples`` -1.

    Raises:
      ValueError: if joined sources disagree on their classes, or a source's differ from ``class_names``.
    """
    class_names = tuple(class_names) or _joined_voc_classes(source, tfds_data_dir)
    infos = []
    for part in split_sources(source):
        scheme, args = _parse(part, training=True)
        if scheme == "tfds":
            names = _tfds_class_names(_tfds_builder(args[0], tfds_data_dir))
            infos.append((part, names, COCO_CATEGORY_IDS if _is_tfds_coco(args[0], names) else ()))
        elif scheme == "voc":
            infos.append((part, tuple(class_names) or annotations.voc_class_names(args[0]), ()))
        elif scheme == "yolo":
            infos.append((part, yolo.class_names(args[0]), ()))
        else:
            infos.append((part,) + annotations.coco_class_names(args[0]))
        _check_given_classes(part, class_names, infos[-1][1])
    _check_same_classes([(part, names) for part, names, _ in infos])
    return SourceInfo(class_names=tuple(infos[0][1]), category_ids=tuple(infos[0][2]))


def read(source: str, *, tfds_data_dir: str = "", training: bool = True, decode: bool = True,
         input_context: tf.distribute.InputContext | None = None,
         seed: int | None = None, max_image_pixels: int = images.DEFAULT_MAX_PIXELS,
         class_names: Sequence[str] = ()) -> Tuple[tf.data.Dataset, SourceInfo]:
    """Reads a source (one epoch, in file order unless TFDS shuffles its files).

    Args:
      source: URI, possibly joined with ``+``.
      tfds_data_dir: TFDS data directory ("" = TFDS's default).
      training: drop COCO crowd boxes (else keep them as difficult); shuffle TFDS files;
        the default ``shapes:`` and ``yolo:`` split.
      decode: yield the data contract (True) or raw elements with the image bytes not yet
        read (False; see ``images``) for a pipeline that shuffles before decoding.
      input_context: shard for this input pipeline (multi-worker).
      seed: TFDS file-shuffle seed and the seed of mixing joined sources.
      max_image_pixels: images whose header declares more pixels are skipped without being decoded:
        files when their annotations are read (PIL reads the header), TFDS records in tf.data.
      class_names: ``--data.class_names``: the VOC label order; other sources' names must equal it.
        Empty: each source's own (see the module doc).

    Returns:
      (dataset, ``SourceInfo``). With ``decode`` the dataset skips unreadable images and
      reports them (see ``images``).

    Raises:
      ValueError / FileNotFoundError: naming the bad URI, missing file, disagreeing classes, or an
        object whose class is not one of the classes.
    """
    class_names = tuple(class_names) or _joined_voc_classes(source, tfds_data_dir)
    record_sets, tfds_sets = [], []
    for part in split_sources(source):
        scheme, args = _parse(part, training)
        if scheme == "tfds":
            tfds_sets.append((part,) + _read_tfds(args[0], args[1], tfds_data_dir, training, input_context, seed))
            _check_given_classes(part, class_names, tfds_sets[-1][2].class_names)
            continue
        if scheme == "voc":
            records = annotations.read_voc(args[0], args[1], tuple(class_names), max_pixels=max_image_pixels)
        elif scheme == "yolo":
            records = yolo.read_yolo(args[0], args[1], max_pixels=max_image_pixels)
        else:
            records = annotations.read_coco(args[0], args[1], training, max_pixels=max_image_pixels)
        _check_given_classes(part, class_names, records.class_names)
        record_sets.append((part, records))
    _check_same_classes([(p, r.class_names) for p, r in record_sets] + [(p, i.class_names) for p, _, i in tfds_sets])

    datasets, sizes, problems = [], [], annotations.ProblemLog()
    category_ids = ()
    if record_sets:
        merged = annotations.Records(class_names=record_sets[0][1].class_names)
        for part, records in record_sets:
            category_ids = category_ids or records.category_ids
            if records.problems.count:
                logging.warning("%s: %d annotation problems: %s", part, records.problems.count,
                                records.problems.summary())
            problems.extend(records.problems)
            for field in ("files", "image_ids", "boxes", "labels", "difficult"):
                getattr(merged, field).extend(getattr(records, field))
        ds = _records_dataset(merged)
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        datasets.append(ds)
        sizes.append(_shard_size(len(merged.files), input_context))
    for _, ds, info in tfds_sets:
        datasets.append(ds)
        sizes.append(info.num_examples)
        category_ids = category_ids or info.category_ids
    first_names = (record_sets[0][1].class_names if record_sets else tfds_sets[0][2].class_names)

    if len(datasets) == 1:
        ds = datasets[0]
    elif training and all(n > 0 for n in sizes):
        # Mix in proportion to size, so that an epoch interleaves all sources.
        weights = [n / sum(sizes) for n in sizes]
        ds = tf.data.Dataset.sample_from_datasets(datasets, weights, seed=seed, stop_on_empty_dataset=False)
    else:
        ds = datasets[0]
        for other in datasets[1:]:
            ds = ds.concatenate(other)
    info = SourceInfo(class_names=tuple(first_names), category_ids=tuple(category_ids),
                      num_examples=sum(sizes) if all(n >= 0 for n in sizes) else -1,
                      problems=problems.summary(), num_problems=problems.count,
                      num_boxes=-1 if tfds_sets else sum(len(b) for b in merged.boxes))
    if decode:
        ds = images.mark_epoch_end(ds.map(images.load_bytes, num_parallel_calls=tf.data.AUTOTUNE))
        ds = images.report_and_skip(ds, source, info.problems, info.num_problems,
                                    max_pixels=max_image_pixels if tfds_sets else None)
        ds = ds.map(images.to_example, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    return ds, info


def _check_given_classes(part: str, given: Sequence[str], names: Sequence[str]) -> None:
    """A source's own class names must equal ``--data.class_names`` when that is given."""
    if given and tuple(given) != tuple(names):
        raise ValueError(f"{part!r} has the classes {list(names)} but --data.class_names gives {list(given)}; "
                         "they must be equal (leave --data.class_names empty to use the data's)")


def _joined_voc_classes(source: str, tfds_data_dir: str) -> Tuple[str, ...]:
    """The class list that labels the ``voc:`` parts of a joined source whose own lists differ; () otherwise.

    A devkit's own list holds only the classes its XML uses, so a small folder of PASCAL classes joined to
    ``tfds:voc`` (or two devkits using different subsets) would disagree with the rest. When another part
    carries a list of its own (TFDS, COCO, YOLO) that holds every devkit's classes, the devkits are read
    with it; when all parts are devkits, with the union of their classes (PASCAL's order when all are
    PASCAL's, else sorted). Anything else is left to the disagreement error.
    """
    parts = [(part,) + _parse(part, training=True) for part in split_sources(source)]
    devkits = [args[0] for _, scheme, args in parts if scheme == "voc"]
    if not devkits or len(parts) == 1:
        return ()
    own = [annotations.voc_class_names(devkit) for devkit in devkits]
    others = [source_info(part, tfds_data_dir=tfds_data_dir).class_names
              for part, scheme, _ in parts if scheme != "voc"]
    if others:
        covering = others[0]
        return tuple(covering) if all(set(names) <= set(covering) for names in own) else ()
    if len({tuple(names) for names in own}) == 1:
        return ()
    union = set().union(*own)
    pascal = [name for name in annotations.VOC_CLASS_NAMES if name in union]
    return tuple(pascal) if len(pascal) == len(union) else tuple(sorted(union))


def _check_same_classes(named):
    for part, names in named[1:]:
        if tuple(names) != tuple(named[0][1]):
            raise ValueError(f"joined sources disagree on classes: {named[0][0]!r} has {list(named[0][1])}, "
                             f"{part!r} has {list(names)}")


def _shard_size(n: int, input_context) -> int:
    if input_context is None:
        return n
    k, i = input_context.num_input_pipelines, input_context.input_pipeline_id
    return len(range(i, n, k))


def _records_dataset(records: annotations.Records) -> tf.data.Dataset:
    """Raw elements from in-memory records (paths only; bytes are read later)."""
    lengths = np.array([len(b) for b in records.boxes], np.int64)

    def ragged(values, dtype, inner):
        flat = np.concatenate(values).astype(dtype) if values else np.zeros((0,) + inner, dtype)
        return tf.RaggedTensor.from_row_lengths(flat.reshape((-1,) + inner), lengths)

    slices = {
        "file": tf.constant(records.files, tf.string, shape=[len(records.files)]),
        "image_id": tf.constant(records.image_ids, tf.string, shape=[len(records.files)]),
        "boxes": ragged(records.boxes, np.float32, (4,)),
        "labels": ragged(records.labels, np.int32, ()),
        "difficult": ragged(records.difficult, bool, ()),
    }

    def to_raw(e):
        return {"file": e["file"], "encoded": tf.constant(b""), "image_id": e["image_id"],
                "boxes": tf.reshape(e["boxes"], [-1, 4]), "labels": tf.reshape(e["labels"], [-1]),
                "difficult": tf.reshape(e["difficult"], [-1]), "num_fixed": tf.constant(0, tf.int32)}

    return tf.data.Dataset.from_tensor_slices(slices).map(to_raw)


def _tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds  # only TFDS sources need it (and its slow import)

    try:
        return tfds.builder(name, data_dir=data_dir or None)
    except ValueError as err:  # DatasetNotFoundError (a ValueError) lists every TFDS dataset: keep one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"TFDS dataset {name!r}: {first}") from None


def _tfds_class_names(builder) -> Tuple[str, ...]:
    return tuple(builder.info.features["objects"]["label"].names)


def _is_tfds_coco(name: str, class_names) -> bool:
    return name.startswith("coco") and len(class_names) == len(COCO_CATEGORY_IDS)


def _read_tfds(name, split, data_dir, training, input_context, seed):
    """(raw dataset, SourceInfo) of one TFDS split; images stay encoded (SkipDecoding)."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    names = _tfds_class_names(builder)
    coco = "is_crowd" in builder.info.features["objects"].keys()
    try:
        ds = builder.as_dataset(
            split=split, shuffle_files=training, decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(input_context=input_context, shuffle_seed=seed))
    except AssertionError as err:  # TFDS's way of saying the data was never prepared
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} "
                                f"(--data.tfds_data_dir): {str(err).strip().splitlines()[0]}") from None
    try:
        num_examples = builder.info.splits[split].num_examples
        num_examples = _shard_size(num_examples, input_context)
    except Exception:  # noqa: BLE001 - unknown split sizes (e.g. mocked metadata) are not an error
        num_examples = -1

    def to_raw(ex):
        objects = ex["objects"]
        flag = objects["is_crowd"] if coco else objects["is_difficult"]
        # All object fields should have one length; mocked data does not, so use the shortest.
        n = tf.reduce_min(tf.stack([tf.shape(objects["bbox"])[0], tf.shape(objects["label"])[0], tf.shape(flag)[0]]))
        bbox = tf.reshape(objects["bbox"][:n], [-1, 4])
        y = tf.sort(tf.stack([bbox[:, 0], bbox[:, 2]], 1), axis=1)
        x = tf.sort(tf.stack([bbox[:, 1], bbox[:, 3]], 1), axis=1)
        sorted_boxes = tf.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1)
        boxes = tf.clip_by_value(sorted_boxes, 0.0, 1.0)
        finite = tf.reduce_all(tf.math.is_finite(bbox), axis=1)
        keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        changed = tf.reduce_any(tf.not_equal(boxes, bbox), axis=1) | tf.logical_not(keep)
        flag = tf.cast(flag[:n], tf.bool)
        if coco and training:
            keep &= tf.logical_not(flag)
        if coco:
            image_id = tf.strings.as_string(ex["image/id"])
        else:
            image_id = tf.strings.regex_replace(ex["image/filename"], r"\.[^.]*$", "")
        labels = tf.cast(objects["label"][:n], tf.int32)
        return {"file": ex["image/filename"], "encoded": ex["image"], "image_id": image_id,
                "boxes": tf.boolean_mask(boxes, keep), "labels": tf.boolean_mask(labels, keep),
                "difficult": tf.boolean_mask(flag, keep), "num_fixed": tf.reduce_sum(tf.cast(changed, tf.int32))}

    ds = ds.map(to_raw, num_parallel_calls=tf.data.AUTOTUNE)
    info = SourceInfo(class_names=names, category_ids=COCO_CATEGORY_IDS if _is_tfds_coco(name, names) else (),
                      num_examples=num_examples)
    return ds, info
