"""An inference-only copy of a trained network, rewritten for speed on TF's oneDNN CPU kernels.

Three rewrites, each exact up to float rounding:

- **BatchNorm folding.** A BN whose input is a conv's only output becomes part of that conv:
  ``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``. The BN layer is
  replaced by an identity, so the conv, its bias and the ReLU fuse into one oneDNN kernel.
- **Direct dilated convolutions.** Every conv becomes ``blocks.DilatedConv2D``, which runs a dilated
  conv as one ``tf.nn.conv2d`` (oneDNN's native kernel) instead of Keras' SpaceToBatch + conv +
  BatchToSpace (SSD-VGG16's fc6: 18.7 ms -> 7.3 ms at 19x19x512 -> 1024 on 2 cores). Models built
  by ``ssd.build_model`` already use it for their dilated convs; older checkpoints load the same.
- **Frozen weights.** ``frozen_forward`` turns the variables into graph constants: oneDNN then
  reorders each filter into its blocked layout once and caches it, instead of on every call
  (SSD-VGG16 300 px: 150 ms -> 133 ms per image).

Used by ``saved_model.export_saved_model``; training and the TFLite converter (which folds and freezes
by itself) use the model as built.
"""

from __future__ import annotations

from typing import Callable, Dict

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from scratchdet_tf.models import blocks


class FoldedBatchNorm(keras.layers.Layer):
    """Stands in for a BN folded into its conv: passes its input through (keeps BN's call arguments)."""

    def call(self, inputs, training=None, mask=None):
        del training, mask
        return inputs


def _producer(layer: keras.layers.Layer):
    """The layer whose output is ``layer``'s single input, or None."""
    if len(layer._inbound_nodes) != 1:
        return None
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    return inputs[0]._keras_history.operation


def foldable_pairs(model: keras.Model) -> Dict[str, str]:
    """{conv name: BN name} for each BN that normalizes a Conv2D's only output (nothing else reads it)."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, [-1], [3], 3):
            continue
        conv = _producer(layer)
        if (isinstance(conv, keras.layers.Conv2D) and len(conv._inbound_nodes) == 1
                and len(conv._outbound_nodes) == 1 and conv.activation is keras.activations.linear):
            pairs[conv.name] = layer.name
    return pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with its BNs folded into their convs and dilated convs run directly.

    The copy has the same layer names, inputs and outputs; it is for inference only
    (``training=True`` would no longer normalize by batch statistics).
    """
    pairs = foldable_pairs(model)
    folded_bns = set(pairs.values())

    def clone(layer):
        if layer.name in folded_bns:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
        if type(layer) in (keras.layers.Conv2D, blocks.DilatedConv2D):
            config = layer.get_config()
            if layer.name in pairs:
                config["use_bias"] = True
            return blocks.DilatedConv2D.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights or layer.name in folded_bns:
            continue  # input layers are renamed by the clone; folded BNs have no weights left
        target = copy.get_layer(layer.name)
        if layer.name in pairs:
            target.set_weights(_folded(layer, model.get_layer(pairs[layer.name])))
        else:
            target.set_weights(layer.get_weights())
    return copy


def _folded(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization):
    """[kernel, bias] of ``conv`` followed by ``bn`` in inference mode, computed in float64."""
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else 0.0
    scale = gamma / np.sqrt(variance + bn.epsilon)
    dtype = conv.kernel.dtype
    return [(kernel * scale).astype(dtype), ((bias - mean) * scale + beta).astype(dtype)]


def frozen_forward(model: keras.Model, image_size: int) -> Callable:
    """``fn(images float32 [B, S, S, 3]) -> model outputs`` with every weight a graph constant."""
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    concrete = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)

    def forward(images):
        # The frozen function returns the flat outputs; restore the model's structure (its dict).
        return tf.nest.pack_sequence_as(concrete.structured_outputs, tf.nest.flatten(frozen(images)))

    return forward


def optimized_forward(model: keras.Model, image_size: int) -> Callable:
    """``frozen_forward`` of ``fold_batch_norms(model)``: what the SavedModel runs."""
    return frozen_forward(fold_batch_norms(model), image_size)
