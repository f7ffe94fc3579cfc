"""SSD multibox heads: per level a 3×3 loc conv and a 3×3 conf conv, BN on their outputs.

"BN in the detection head" (paper Table 1) is placed as the released code does it
(docs/DECISIONS.md#head-bn): BatchNorm directly on each prediction conv's output, no ReLU, one BN per
conv and level. Without head BN the convs have a bias.
"""

from __future__ import annotations

from typing import Sequence

import keras

from scratchdet_tf.models import blocks


def multibox_head(sources: Sequence, anchors_per_location: Sequence[int], num_classes: int, norm: blocks.Norm,
                  init: str = "xavier"):
    """Predictions of all levels, concatenated in prior order.

    Args:
      sources: detection feature maps [B, h_i, w_i, C_i].
      anchors_per_location: priors per cell k_i, per level.
      num_classes: foreground classes C (background is added as class 0).
      norm: head BN settings (``enabled=False`` for the no-head-BN ablation).
      init: prediction conv kernels: ``"xavier"`` (Caffe xavier) or ``"gaussian"`` (N(0, 0.01^2), as
        SSD-Caffe's ConvBNLayer initializes the released ScratchDet COCO head).

    Returns:
      (box_deltas float32 [B, A, 4] in (dy, dx, dh, dw) order,
       cls_logits float32 [B, A, C+1]; column 0 is background).
    """
    if len(sources) != len(anchors_per_location):
        raise ValueError(f"{len(anchors_per_location)} anchor levels for {len(sources)} feature maps")
    locs, confs = [], []
    for i, (x, k) in enumerate(zip(sources, anchors_per_location)):
        loc = blocks.conv_bn(x, 4 * k, 3, norm, relu=False, init=init, name=f"head_loc_{i}")
        conf = blocks.conv_bn(x, (num_classes + 1) * k, 3, norm, relu=False, init=init, name=f"head_conf_{i}")
        # Channel k*4 + j at cell (y, x) is coordinate j of prior k there: [B, h*w*k, 4].
        locs.append(keras.layers.Reshape((-1, 4), name=f"head_loc_{i}_flat")(loc))
        confs.append(keras.layers.Reshape((-1, num_classes + 1), name=f"head_conf_{i}_flat")(conf))
    box_deltas = keras.layers.Concatenate(axis=1, name="box_deltas_concat")(locs)
    cls_logits = keras.layers.Concatenate(axis=1, name="cls_logits_concat")(confs)
    # Losses and post-processing run in float32 even under a mixed-precision policy.
    box_deltas = keras.layers.Activation("linear", dtype="float32", name="box_deltas")(box_deltas)
    cls_logits = keras.layers.Activation("linear", dtype="float32", name="cls_logits")(cls_logits)
    return box_deltas, cls_logits
