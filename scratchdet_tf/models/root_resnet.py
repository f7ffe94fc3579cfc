"""Root-ResNet-18/34 (and -10, one block per stage), the paper's ResNet-18 ablation family, and the extras.

Paper §3.2 and Fig. 3 (docs/DECISIONS.md#default-network): a root block of ``root_depth`` convs
(k×k, 64 ch, the first at ``first_stride``), an optional 2×2/2 max-pool, the four
ResNet stages of basic blocks, then four residual extra blocks of 128 channels.
Detection sources are block outputs (post-ReLU): the last stage output at stride 8
(38×38 at 300), the last stage output at stride 16 (19×19), and the four extras
(10, 5, 3, 1).
"""

from __future__ import annotations

from typing import List

import keras

from scratchdet_tf.models import blocks

STAGE_CHANNELS = (64, 128, 256, 512)
# 10: one block per stage, not in the paper; a fast backbone for small CPU-trained models (the demo).
STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
NUM_EXTRA_BLOCKS = 4
MAX_STRIDE = 16  # the second detection level sits at stride 16 (19×19 at 300) in every variant


def source_layers(images, model_cfg, norm: blocks.Norm) -> List:
    """Backbone + extras; returns the six detection source tensors.

    Args:
      images: [B, S, S, 3] float tensor (mean-subtracted RGB).
      model_cfg: ``config.ModelConfig`` with ``backbone == 'root_resnet'``.
      norm: batch-norm settings for every conv.

    Returns:
      Six tensors [B, h_i, w_i, C_i].
    """
    ch = model_cfg.channels
    x = images
    for i in range(model_cfg.root_depth):
        x = blocks.conv_bn(
            x, ch(model_cfg.root_channels), model_cfg.root_kernel, norm,
            stride=model_cfg.first_stride if i == 0 else 1, name=f"root_conv{i + 1}",
        )
    stride = model_cfg.first_stride
    if model_cfg.root_pool:
        # Caffe pools with ceil rounding; Keras' 'same' max-pool matches it (pads ignored).
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name="root_pool")(x)
        stride *= 2

    # Stages keep their stride-2 entry until stride 16 is reached: variants with stride 4
    # before conv2_x (ResNet-18: stride-2 conv + pool) keep conv5_x at stride 16 so every
    # variant feeds the same 38/19 levels (paper Fig. 3 caption).
    sources = []
    stride8 = None
    for stage, (channels, num_blocks) in enumerate(zip(STAGE_CHANNELS, STAGE_BLOCKS[model_cfg.depth])):
        stage_stride = 1 if stage == 0 or stride >= MAX_STRIDE else 2
        stride *= stage_stride
        for b in range(num_blocks):
            x = blocks.basic_block(
                x, ch(channels), norm, stride=stage_stride if b == 0 else 1, name=f"conv{stage + 2}_{b + 1}"
            )
        if stride == 8:
            stride8 = x
    sources += [stride8, x]

    extra_channels = ch(model_cfg.extra_channels)
    for i in range(NUM_EXTRA_BLOCKS):
        last = i == NUM_EXTRA_BLOCKS - 1
        # The last extra maps 3×3 to 1×1 with an unpadded 3×3 stride-2 conv (paper: 3 → 1).
        valid = last and x.shape[1] >= 3 and x.shape[2] >= 3
        x = blocks.basic_block(x, extra_channels, norm, stride=2, valid=valid, name=f"extra{i + 1}")
        sources.append(x)
    return sources
