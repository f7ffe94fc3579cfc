"""The configuration tree: frozen dataclasses, one per section, validated on construction.

Every leaf becomes one dotted command-line flag (``--train.batch_size=32``); its text form
(flagfiles, ``flags.cfg``) is ``config.flagfile``. Paper values live in ``configs/*.cfg``; the defaults here are
the ScratchDet300 VOC network so that a bare ``Config()`` is the paper's model.
Validation errors name the dotted flag, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag."""


def _check(condition: bool, flag: str, value, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"--{flag}={_show(value)} is invalid: {allowed}")


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _one_of(flag: str, value, allowed) -> None:
    _check(value in allowed, flag, value, f"allowed values are {', '.join(map(str, allowed))}")


BACKBONES = ("root_resnet", "vgg16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
METRICS = ("voc07", "voc12", "coco")
TFLITE_MODES = ("fp32", "fp16", "dynamic", "int8")
LR_SCHEDULES = ("multistep", "cosine")
# What each kind of evaluation reports (the first is its headline, what --train.best_metric defaults to):
# VOC's 11-point and area mAP; COCOeval's 12 statistics (evaluation.coco_metric.COCO_STAT_NAMES).
METRIC_KEYS = {
    "voc": ("mAP_07", "mAP_area"),
    "coco": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
}


def headline_metric(eval_metric: str) -> str:
    """The metric key a run's periodic evaluation ranks checkpoints by when ``train.best_metric`` is empty."""
    return "mAP_area" if eval_metric == "voc12" else METRIC_KEYS["coco" if eval_metric == "coco" else "voc"][0]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared.

    Sources are URIs (see docs/DECISIONS.md#data-contract): ``tfds:voc/2007:train+validation``,
    ``voc:<VOCdevkit/VOC2007>:trainval``, ``coco:<instances.json>:<image_dir>``,
    ``yolo:<data.yaml>:train``, ``shapes:<dir>``. Several sources are joined with ``+`` before a scheme
    (``voc:A:trainval+voc:B:trainval``); a ``+`` inside a TFDS split stays a split union.
    """

    train_source: str = "tfds:voc/2007:train+validation+tfds:voc/2012:train+validation"
    val_source: str = "tfds:voc/2007:test"
    tfds_data_dir: str = ""
    class_names: Tuple[str, ...] = ()  # empty: taken from the dataset
    mean_rgb: Tuple[float, ...] = (123.0, 117.0, 104.0)
    max_boxes: int = 100
    augment: bool = True
    # Strength of the SSD augmentation (the flip and the random resize method always run when augment is on):
    expand_prob: float = 0.5  # probability of the zoom-out expansion
    max_expand_ratio: float = 4.0  # its largest canvas / image side ratio
    photometric: bool = True  # brightness, contrast, saturation and hue distortion
    crop: bool = True  # the min-IoU crop sampler
    use_difficult: bool = True  # train on VOC "difficult" boxes, as SSD-Caffe does
    shuffle_buffer: int = 1000
    deterministic: bool = False
    cache: bool = False
    # Images whose header declares more pixels are skipped by the readers and rejected by the serving
    # signatures before decoding (decompression bombs); = data.images.DEFAULT_MAX_PIXELS.
    max_image_pixels: int = 50_000_000

    def __post_init__(self):
        _check(bool(self.train_source), "data.train_source", self.train_source, "must not be empty")
        _check(len(self.mean_rgb) == 3, "data.mean_rgb", self.mean_rgb, "three numbers R,G,B")
        _check(self.max_boxes > 0, "data.max_boxes", self.max_boxes, "must be > 0")
        _check(0 <= self.expand_prob <= 1, "data.expand_prob", self.expand_prob, "in [0, 1]")
        _check(self.max_expand_ratio >= 1, "data.max_expand_ratio", self.max_expand_ratio, "must be >= 1")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", self.shuffle_buffer, "must be >= 0")
        _check(self.max_image_pixels > 0, "data.max_image_pixels", self.max_image_pixels, "must be > 0")


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """SSD-Caffe PriorBox parameters, one entry per detection level.

    ``min_sizes``/``max_sizes`` are pixels at ``size_reference`` and scale linearly with
    ``model.image_size``. ``steps`` empty means image_size / feature-map size (PriorBox's
    own rule); the paper's 300 configs set 8,16,32,64,100,300 explicitly.
    """

    min_sizes: Tuple[float, ...] = (30.0, 60.0, 111.0, 162.0, 213.0, 264.0)
    max_sizes: Tuple[float, ...] = (60.0, 111.0, 162.0, 213.0, 264.0, 315.0)
    aspect_ratios: Tuple[Tuple[float, ...], ...] = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
    steps: Tuple[float, ...] = (8.0, 16.0, 32.0, 64.0, 100.0, 300.0)
    size_reference: int = 300
    offset: float = 0.5
    clip: bool = False
    variances: Tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)

    def __post_init__(self):
        n = len(self.min_sizes)
        _check(n > 0, "anchors.min_sizes", self.min_sizes, "at least one level")
        _check(len(self.max_sizes) in (0, n), "anchors.max_sizes", self.max_sizes,
               f"empty or {n} values, one per level of --anchors.min_sizes")
        _check(len(self.aspect_ratios) == n, "anchors.aspect_ratios", _ratios_str(self.aspect_ratios),
               f"{n} ';'-separated levels to match the {n} levels of --anchors.min_sizes")
        _check(len(self.steps) in (0, n), "anchors.steps", self.steps, f"empty or {n} values")
        _check(all(s > 0 for s in self.min_sizes), "anchors.min_sizes", self.min_sizes, "sizes must be > 0")
        for lo, hi in zip(self.min_sizes, self.max_sizes):
            _check(hi > lo, "anchors.max_sizes", self.max_sizes, "each max size must exceed its min size")
        for level in self.aspect_ratios:
            _check(all(r >= 1.0 for r in level), "anchors.aspect_ratios", _ratios_str(self.aspect_ratios),
                   "ratios >= 1 (the flipped 1/r box is added automatically)")
        _check(len(self.variances) == 4 and all(v > 0 for v in self.variances), "anchors.variances",
               self.variances, "four positive numbers")
        _check(self.size_reference > 0, "anchors.size_reference", self.size_reference, "must be > 0")
        _check(0.0 <= self.offset <= 1.0, "anchors.offset", self.offset, "must be in [0, 1]")

    @property
    def num_levels(self) -> int:
        return len(self.min_sizes)

    def anchors_per_location(self) -> Tuple[int, ...]:
        """Priors per feature-map cell, per level: min square, [sqrt(min*max) square], 2 per ratio."""
        extra = 1 if self.max_sizes else 0
        return tuple(1 + extra + 2 * len(r) for r in self.aspect_ratios)


def _ratios_str(ratios) -> str:
    return ";".join(",".join(f"{r:g}" for r in level) for level in ratios)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network. Defaults: Root-ResNet-34 ScratchDet300 (paper §3.2, docs/DECISIONS.md#default-network).

    ``root_resnet`` covers the paper's whole ResNet family: ResNet-18 is
    ``root_kernel=7 root_depth=1 first_stride=2``, ResNet-18-A adds ``root_pool=false``,
    ResNet-18-B is ``first_stride=1``, Root-ResNet-18 is ``root_kernel=3 root_depth=3
    first_stride=1`` (Fig. 3, Table 2).
    """

    backbone: str = "root_resnet"
    depth: int = 34
    root_kernel: int = 3
    root_depth: int = 3
    root_channels: int = 64
    first_stride: int = 1
    root_pool: bool = True
    extra_channels: int = 128
    width: float = 1.0
    image_size: int = 300
    # Foreground classes (background excluded); 0: as many as the training data has (set when training
    # starts: class_names.resolve), so only the paper configs name it.
    num_classes: int = 0
    backbone_bn: bool = True
    head_bn: bool = True
    l2norm: bool = False  # VGG16 only: SSD's L2Norm (scale 20) on conv4_3
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-5
    head_bn_epsilon: float = 1e-3
    # Prediction conv init: "xavier" (the paper: xavier everywhere) or "gaussian" (N(0, 0.01^2), the
    # released Caffe COCO head with BN, SSD's ConvBNLayer). Under head BN the conv is scale-invariant,
    # so its init norm sets its effective lr; that matters in short runs of narrow models.
    head_init: str = "xavier"
    # Start every residual block as its shortcut (its last BN's gamma = 0). Not in the paper (which
    # initializes BN to gamma = 1); shortens the from-scratch plateau of short runs (docs/TRAINING.md).
    zero_init_residual: bool = False

    def __post_init__(self):
        _one_of("model.backbone", self.backbone, BACKBONES)
        _one_of("model.depth", self.depth, (10, 18, 34))
        _one_of("model.root_kernel", self.root_kernel, (3, 7))
        _check(1 <= self.root_depth <= 5, "model.root_depth", self.root_depth, "1 to 5 stacked convs")
        _check(self.root_kernel == 3 or self.root_depth == 1, "model.root_depth", self.root_depth,
               "a 7x7 root has exactly one conv (use --model.root_kernel=3 to stack convs)")
        _one_of("model.first_stride", self.first_stride, (1, 2))
        _check(self.backbone != "root_resnet" or self.first_stride * (2 if self.root_pool else 1) >= 2,
               "model.root_pool", self.root_pool,
               "with --model.first_stride=1 the root max-pool is needed to reach the 38x38 level")
        _check(self.root_channels > 0, "model.root_channels", self.root_channels, "must be > 0")
        _check(self.extra_channels > 0, "model.extra_channels", self.extra_channels, "must be > 0")
        _check(0.0 < self.width <= 4.0, "model.width", self.width, "a multiplier in (0, 4]")
        _check(32 <= self.image_size <= 2048, "model.image_size", self.image_size, "32 to 2048 pixels")
        _check(self.num_classes >= 0, "model.num_classes", self.num_classes,
               "0 (from the training data) or the number of classes, background excluded")
        _check(not self.l2norm or self.backbone == "vgg16", "model.l2norm", self.l2norm,
               "only the vgg16 backbone has SSD's conv4_3 L2Norm")
        _check(0.0 <= self.bn_momentum < 1.0, "model.bn_momentum", self.bn_momentum, "must be in [0, 1)")
        _check(self.bn_epsilon > 0, "model.bn_epsilon", self.bn_epsilon, "must be > 0")
        _check(self.head_bn_epsilon > 0, "model.head_bn_epsilon", self.head_bn_epsilon, "must be > 0")
        _one_of("model.head_init", self.head_init, ("xavier", "gaussian"))

    def channels(self, c: int) -> int:
        """Apply the width multiplier to a paper channel count."""
        return max(1, int(round(c * self.width)))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """MultiBox loss and matching (docs/PAPER.md#matching-and-loss)."""

    iou_threshold: float = 0.5
    # Unmatched priors are negatives only below this best IoU; [neg_overlap, iou_threshold) is ignored.
    # SSD-Caffe's neg_overlap, 0.5 (= iou_threshold: no ignored band) in the paper's configs.
    neg_overlap: float = 0.5
    neg_pos_ratio: float = 3.0
    loc_weight: float = 1.0

    def __post_init__(self):
        _check(0.0 < self.iou_threshold <= 1.0, "loss.iou_threshold", self.iou_threshold, "in (0, 1]")
        _check(0.0 < self.neg_overlap <= self.iou_threshold, "loss.neg_overlap", self.neg_overlap,
               f"in (0, --loss.iou_threshold={self.iou_threshold:g}]")
        _check(self.neg_pos_ratio >= 0, "loss.neg_pos_ratio", self.neg_pos_ratio, "must be >= 0")
        _check(self.loc_weight >= 0, "loss.loc_weight", self.loc_weight, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and the training loop (docs/PAPER.md#schedules)."""

    batch_size: int = 128  # global; divided over replicas
    max_steps: int = 100_000
    learning_rate: float = 0.05
    lr_schedule: str = "multistep"  # the paper's steps at lr_boundaries, or "cosine" to max_steps
    lr_boundaries: Tuple[int, ...] = (45_000, 75_000, 95_000)
    lr_decay: float = 0.1
    lr_final_factor: float = 0.01  # cosine: the last lr as a fraction of learning_rate
    warmup_steps: int = 0
    warmup_factor: float = 1.0 / 3.0
    momentum: float = 0.9
    weight_decay: float = 5e-4  # coupled (Caffe) L2: g += wd * w
    grad_accum_steps: int = 1
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 5
    log_every_steps: int = 20
    # Periodic evaluation on data.val_source (0: off, the paper's runs). When on, the best checkpoint by
    # best_metric ("" = the eval metric's headline: mAP_07, mAP_area or AP) is kept in <model_dir>/best/, and
    # patience > 0 stops the run after that many evaluations without a new best.
    eval_every_steps: int = 0
    best_metric: str = ""
    patience: int = 0
    max_bad_steps: int = 10
    deterministic: bool = False
    seed: int = 0
    jit_compile: bool = False
    strategy: str = "default"
    devices: Tuple[str, ...] = ()
    mixed_precision: str = "float32"
    sync_bn: bool = False
    init_checkpoint: str = ""

    def __post_init__(self):
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "must be > 0")
        _check(self.max_steps > 0, "train.max_steps", self.max_steps, "must be > 0")
        _check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "train.learning_rate",
               self.learning_rate, "must be a positive number")
        _check(list(self.lr_boundaries) == sorted(set(self.lr_boundaries)) and all(b > 0 for b in self.lr_boundaries),
               "train.lr_boundaries", self.lr_boundaries, "strictly increasing positive steps")
        _one_of("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check(0 < self.lr_decay <= 1, "train.lr_decay", self.lr_decay, "in (0, 1]")
        _check(0 <= self.lr_final_factor <= 1, "train.lr_final_factor", self.lr_final_factor, "in [0, 1]")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(0 < self.warmup_factor <= 1, "train.warmup_factor", self.warmup_factor, "in (0, 1]")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        _check(self.checkpoint_every_steps > 0, "train.checkpoint_every_steps", self.checkpoint_every_steps,
               "must be > 0")
        _check(self.keep_checkpoints > 0, "train.keep_checkpoints", self.keep_checkpoints, "must be > 0")
        _check(self.log_every_steps > 0, "train.log_every_steps", self.log_every_steps, "must be > 0")
        _check(self.eval_every_steps >= 0, "train.eval_every_steps", self.eval_every_steps, "0 (off) or more")
        _check(self.patience >= 0, "train.patience", self.patience, "0 (no early stopping) or more evaluations")
        _check(self.max_bad_steps > 0, "train.max_bad_steps", self.max_bad_steps, "must be > 0")
        _one_of("train.strategy", self.strategy, STRATEGIES)
        _one_of("train.mixed_precision", self.mixed_precision, PRECISIONS)
        _check(not (self.deterministic and self.jit_compile), "train.jit_compile", self.jit_compile,
               "XLA has no deterministic max-pool gradient; set --train.deterministic=false to use XLA")
        _check(not (self.sync_bn and self.jit_compile), "train.sync_bn", self.sync_bn,
               "synchronized BN cannot run inside the XLA-compiled step; set --train.jit_compile=false")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Post-processing and evaluation (docs/PAPER.md#evaluation and docs/PAPER.md#multi-scale-test)."""

    metric: str = "voc07"
    batch_size: int = 8
    score_threshold: float = 0.01
    pre_nms_top_k: int = 400
    nms_iou_threshold: float = 0.45
    max_detections: int = 200
    multi_scale: bool = False
    num_images: int = 0  # 0: the whole split

    def __post_init__(self):
        _one_of("eval.metric", self.metric, METRICS)
        _check(self.batch_size > 0, "eval.batch_size", self.batch_size, "must be > 0")
        _check(0 <= self.score_threshold < 1, "eval.score_threshold", self.score_threshold, "in [0, 1)")
        _check(self.pre_nms_top_k > 0, "eval.pre_nms_top_k", self.pre_nms_top_k, "must be > 0")
        _check(0 < self.nms_iou_threshold <= 1, "eval.nms_iou_threshold", self.nms_iou_threshold, "in (0, 1]")
        _check(self.max_detections > 0, "eval.max_detections", self.max_detections, "must be > 0")
        _check(self.num_images >= 0, "eval.num_images", self.num_images, "0 (all) or more")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """SavedModel / TFLite export."""

    tflite: Tuple[str, ...] = ()
    num_calibration_images: int = 100
    max_detections: int = 100
    # SavedModel runs an inference graph: BN folded into convs, dilated convs direct, weights as
    # constants (inference_graph.py; 10-20 % faster on CPU). False keeps the Keras model's variables.
    optimize: bool = True

    def __post_init__(self):
        for mode in self.tflite:
            _one_of("export.tflite", mode, TFLITE_MODES)
        _check(self.num_calibration_images > 0, "export.num_calibration_images", self.num_calibration_images,
               "must be > 0")
        _check(self.max_detections > 0, "export.max_detections", self.max_detections, "must be > 0")


@dataclasses.dataclass(frozen=True)
class Config:
    """The root of the tree; cross-section checks live here."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    anchors: AnchorConfig = dataclasses.field(default_factory=AnchorConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self):
        _check(self.anchors.num_levels == NUM_LEVELS, "anchors.min_sizes", self.anchors.min_sizes,
               f"{NUM_LEVELS} levels, one per detection feature map of --model.backbone={self.model.backbone}")
        names = self.data.class_names
        _check(not names or not self.model.num_classes or len(names) == self.model.num_classes, "data.class_names",
               names, f"{self.model.num_classes} names to match --model.num_classes")
        keys = METRIC_KEYS["coco" if self.eval.metric == "coco" else "voc"]
        _check(not self.train.best_metric or self.train.best_metric in keys, "train.best_metric",
               self.train.best_metric, f"one of {', '.join(keys)} (the metrics of --eval.metric={self.eval.metric}), "
               "or empty for the headline one")
        _check(not self.train.eval_every_steps or self.data.val_source, "data.val_source", self.data.val_source,
               f"periodic evaluation (--train.eval_every_steps={self.train.eval_every_steps}) needs a validation "
               "source")
        _check(not self.train.patience or self.train.eval_every_steps, "train.patience", self.train.patience,
               "early stopping needs periodic evaluation: set --train.eval_every_steps too")


# Every backbone feeds six detection levels (38, 19, 10, 5, 3, 1 at 300x300).
NUM_LEVELS = 6


def replace(cfg: Config, **sections) -> Config:
    """Copy of ``cfg`` with whole sections or ``section__field`` leaves replaced.

    ``replace(cfg, model__width=0.25, train__batch_size=2)``.
    """
    grouped: dict = {}
    for key, value in sections.items():
        section, _, field = key.partition("__")
        if field:
            grouped.setdefault(section, {})[field] = value
        else:
            grouped[section] = value
    updates = {}
    for section, value in grouped.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(cfg, section), **value)
        updates[section] = value
    return dataclasses.replace(cfg, **updates)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples become lists) for config.json."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of ``to_dict``; unknown keys are an error naming them."""
    sections = {}
    for field in dataclasses.fields(Config):
        cls = field.default_factory  # the section dataclass
        values = dict(d.get(field.name, {}))
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown config keys in section {field.name!r}: {sorted(unknown)}")
        for name, value in values.items():
            if isinstance(value, list):
                values[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        sections[field.name] = cls(**values)
    unknown_sections = set(d) - set(sections)
    if unknown_sections:
        raise ConfigError(f"unknown config sections: {sorted(unknown_sections)}")
    return Config(**sections)
