"""SSD300's VGG16 (atrous fc6/fc7) and its extra layers, with BatchNorm switchable (paper Table 1).

Layout of SSD-Caffe's ``VGGNetBody`` + ``AddExtraLayers``: conv1–conv5 with 2×2/2 ceil
max-pools (300 → 150 → 75 → 38 → 19), pool5 3×3/1, fc6 3×3 dilation 6 (1024), fc7 1×1
(1024), then conv6–conv9 (1×1 reduce, 3×3 stride 2 / unpadded). Sources: conv4_3 (38,
optionally L2-normalized), fc7 (19), conv6_2 (10), conv7_2 (5), conv8_2 (3), conv9_2 (1).
"""

from __future__ import annotations

from typing import List

import keras

from scratchdet_tf.models import blocks

VGG_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# (1×1 channels, 3×3 channels, 3×3 stride) of conv6..conv9; stride 1 = SSD's unpadded 3×3.
EXTRAS = ((256, 512, 2), (128, 256, 2), (128, 256, 1), (128, 256, 1))


def source_layers(images, model_cfg, norm: blocks.Norm) -> List:
    """VGG16 body + SSD extras; returns the six detection source tensors.

    Args:
      images: [B, S, S, 3] float tensor (mean-subtracted RGB).
      model_cfg: ``config.ModelConfig`` with ``backbone == 'vgg16'``; ``backbone_bn``
        switches BN in every body/extra conv, ``l2norm`` SSD's conv4_3 L2Norm.
      norm: batch-norm settings (``enabled`` already reflects ``backbone_bn``).
    """
    ch = model_cfg.channels
    x = images
    sources = []
    for stage, (channels, num_convs) in enumerate(VGG_STAGES):
        if stage:
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{stage}")(x)
        for i in range(num_convs):
            x = blocks.conv_bn(x, ch(channels), 3, norm, name=f"conv{stage + 1}_{i + 1}")
        if stage == 3:
            source = blocks.L2Norm(name="conv4_3_norm")(x) if model_cfg.l2norm else x
            sources.append(source)
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool5")(x)
    x = blocks.conv_bn(x, ch(1024), 3, norm, dilation=6, name="fc6")
    x = blocks.conv_bn(x, ch(1024), 1, norm, name="fc7")
    sources.append(x)
    for i, (reduce_channels, out_channels, stride) in enumerate(EXTRAS):
        name = f"conv{i + 6}"
        x = blocks.conv_bn(x, ch(reduce_channels), 1, norm, name=f"{name}_1")
        # SSD's conv8_2/conv9_2 are unpadded (5 → 3 → 1); on maps smaller than 3 pad instead.
        pad = 1 if stride == 2 or min(x.shape[1], x.shape[2]) < 3 else 0
        x = blocks.conv_bn(x, ch(out_channels), 3, norm, stride=stride, pad=pad, name=f"{name}_2")
        sources.append(x)
    return sources
