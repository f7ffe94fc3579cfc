"""``build_model``: backbone + extras + multibox head as one Keras functional model."""

from __future__ import annotations

from typing import List, Tuple

import keras
import numpy as np

from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.models import blocks, heads, root_resnet, vgg


def build_model(model_cfg, anchor_cfg, *, sync_bn: bool = False) -> keras.Model:
    """The SSD detector for ``model_cfg`` (inputs: mean-subtracted RGB float32).

    Args:
      model_cfg: ``config.ModelConfig``.
      anchor_cfg: ``config.AnchorConfig`` (only the priors per location are used here).
      sync_bn: synchronize BN statistics across replicas.

    Returns:
      A model mapping images [B, S, S, 3] to ``{"box_deltas": float32 [B, A, 4],
      "cls_logits": float32 [B, A, C+1]}``; column 0 of the logits is background.

    Raises:
      ValueError: ``model_cfg.num_classes`` is 0 (not yet taken from the data: ``class_names.resolve``).
    """
    if model_cfg.num_classes < 1:
        raise ValueError("--model.num_classes=0 means 'as many as the training data has': resolve it from the "
                         "data first (data.class_names.resolve) or set it")
    backbone_norm = blocks.Norm(model_cfg.backbone_bn, model_cfg.bn_momentum, model_cfg.bn_epsilon, sync_bn,
                                zero_init_residual=model_cfg.zero_init_residual)
    head_norm = blocks.Norm(model_cfg.head_bn, model_cfg.bn_momentum, model_cfg.head_bn_epsilon, sync_bn)
    images = keras.Input((model_cfg.image_size, model_cfg.image_size, 3), name="images")
    sources = {
        "root_resnet": root_resnet.source_layers,
        "vgg16": vgg.source_layers,
    }[model_cfg.backbone](images, model_cfg, backbone_norm)
    box_deltas, cls_logits = heads.multibox_head(
        sources, anchor_cfg.anchors_per_location(), model_cfg.num_classes, head_norm, init=model_cfg.head_init
    )
    name = f"ssd{model_cfg.image_size}_{model_cfg.backbone}"
    if model_cfg.backbone == "root_resnet":
        name += str(model_cfg.depth)
    return keras.Model(images, {"box_deltas": box_deltas, "cls_logits": cls_logits}, name=name)


def feature_map_sizes(model: keras.Model) -> List[Tuple[int, int]]:
    """The (h, w) of every detection level of a model made by ``build_model``."""
    sizes = []
    while True:
        try:
            layer = model.get_layer(f"head_loc_{len(sizes)}")
        except ValueError:
            return sizes
        sizes.append(tuple(int(d) for d in layer.output.shape[1:3]))


def model_anchors(model: keras.Model, anchor_cfg, image_size: int) -> np.ndarray:
    """Priors float32 [A, 4] (normalized yxyx) matching the model's prediction order."""
    return anchors_lib.anchors_from_config(anchor_cfg, image_size, feature_map_sizes(model))


def conv_macs_of_layer(layer) -> int:
    """Multiply-accumulates of one conv layer for one image; 0 for other layers.

    Nominal count, as docs/PAPER.md#model-size: H_out * W_out * k_h * k_w * (C_in / groups) * C_out
    (padding taps counted).
    """
    if not isinstance(layer, keras.layers.Conv2D):
        return 0
    _, h, w, c_out = layer.output.shape
    k_h, k_w, c_in_per_group, _ = layer.kernel.shape
    return int(h) * int(w) * int(k_h) * int(k_w) * int(c_in_per_group) * int(c_out)


def conv_macs(model: keras.Model) -> int:
    """Multiply-accumulates of all conv layers for one image (see ``conv_macs_of_layer``)."""
    return sum(conv_macs_of_layer(layer) for layer in model.layers)


def num_trainable_params(model: keras.Model) -> int:
    """Trainable parameters (conv weights and biases, BN gamma/beta, L2Norm scales)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
