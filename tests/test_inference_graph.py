"""inference_graph: BN folding against a numpy conv+BN, and the optimized graph against the Keras model."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from scratchdet_tf.export import inference_graph
from scratchdet_tf.models import ssd

SIZE = 64
TINY = tiny_config(model__num_classes=3).model  # 64 px
VGG16 = dataclasses.replace(TINY, backbone="vgg16")  # (model.depth is the Root-ResNet's: unused)


def randomize_bn(model, seed=0):
    """Non-trivial BN parameters and statistics (fresh BNs are the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0.0, 0.2, n))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))


def graph_ops(forward):
    concrete = tf.function(forward).get_concrete_function(tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32))
    ops = {op.type for op in concrete.graph.get_operations()}
    for function in concrete.graph.as_graph_def().library.function:
        ops |= {node.op for node in function.node_def}
    return ops


@pytest.mark.parametrize("model_config", [
    TINY,
    VGG16,
    dataclasses.replace(VGG16, backbone_bn=False, head_bn=False, l2norm=True),
], ids=["root_resnet18", "vgg16_bn", "vgg16_l2norm"])
def test_optimized_forward_equals_the_keras_model(model_config):
    keras.utils.set_random_seed(0)
    model = ssd.build_model(model_config, tiny_config().anchors)
    randomize_bn(model)
    bns = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert sorted(inference_graph.foldable_pairs(model).values()) == sorted(bns)  # every BN here follows a conv
    images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], [1, 2], -120.0, 120.0)
    want = model(images, training=False)
    forward = inference_graph.optimized_forward(model, SIZE)
    got = forward(images)
    for key in ("cls_logits", "box_deltas"):
        scale = float(np.abs(want[key]).max())
        np.testing.assert_allclose(got[key], want[key], atol=2e-5 * scale, rtol=1e-4)
    ops = graph_ops(forward)
    assert not ops & {"ReadVariableOp", "VarHandleOp", "ResourceGather"}, "weights must be constants"
    assert "SpaceToBatchND" not in ops, "dilated convs must run directly"
    assert "Rsqrt" not in ops or model_config.l2norm, "no BN arithmetic left"


def test_folding_matches_a_numpy_conv_then_batch_norm():
    inputs = keras.Input([4, 4, 3])
    y = keras.layers.Conv2D(5, 1, use_bias=True, name="conv")(inputs)
    y = keras.layers.BatchNormalization(epsilon=1e-3, name="bn")(y)
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(1, 1, 3, 5)), rng.normal(size=5)
    g, beta, m, v = rng.uniform(0.5, 2, 5), rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 3, 5)
    model.get_layer("conv").set_weights([w, b])
    model.get_layer("bn").set_weights([g, beta, m, v])
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    want = ((x @ w[0, 0] + b) - m) / np.sqrt(v + 1e-3) * g + beta

    folded = inference_graph.fold_batch_norms(model)
    kernel, bias = folded.get_layer("conv").get_weights()
    np.testing.assert_allclose(kernel[0, 0], w[0, 0] * g / np.sqrt(v + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(folded(x), want, rtol=1e-5, atol=1e-5)
    assert isinstance(folded.get_layer("bn"), inference_graph.FoldedBatchNorm)


def test_a_conv_whose_output_is_read_twice_keeps_its_batch_norm():
    inputs = keras.Input([4, 4, 3])
    c = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inputs)
    y = keras.layers.Add()([keras.layers.BatchNormalization(name="bn")(c), c])  # the raw conv output is reused
    model = keras.Model(inputs, y)
    randomize_bn(model)
    assert inference_graph.foldable_pairs(model) == {}
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(inference_graph.fold_batch_norms(model)(x), model(x, training=False), rtol=1e-5,
                               atol=1e-6)
