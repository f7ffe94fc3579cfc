"""Networks: feature maps per config, hand-counted parameters, paper sizes, ablation knobs."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import ROOT, run_tool, tiny_config

from scratchdet_tf import config
from scratchdet_tf.cli import config_flags
from scratchdet_tf.config import flagfile
from scratchdet_tf.models import blocks, ssd

PAPER_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")) +
                 glob.glob(os.path.join(ROOT, "configs", "ablations", "*.cfg")))


OWN_DATA = ("--data.train_source=yolo:my/data.yaml:train", "--data.val_source=yolo:my/data.yaml:val")  # the user's


def load(path, *overrides):
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    fv(["prog"] + flagfile.expand([f"--flagfile={path}", *overrides]))
    return config_flags.config_from_flags(fv)


def build(cfg):
    keras.backend.clear_session()
    return ssd.build_model(cfg.model, cfg.anchors)


def tiny_cfg(**model):
    """The tiny detector for 2 classes; ``model`` overrides fields of its ``model`` section."""
    return tiny_config(**{"model__num_classes": 2, **{f"model__{name}": value for name, value in model.items()}})


def test_there_is_a_config_per_paper_table_cell():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    for bn in ("none", "head", "backbone", "both"):
        for lr in ("0.001", "0.01", "0.05"):
            assert f"ablations/table1_{bn}_lr{lr}.cfg" in names
    for row in ("s2_7x7", "s2_3x3", "s2_3x3x2", "s2_3x3x3", "s1_7x7", "s1_3x3", "s1_3x3x2", "s1_3x3x3",
                "s1_3x3x4", "s1_3x3x5"):
        assert f"ablations/table2_{row}.cfg" in names
    assert {"scratchdet300_r34_voc07.cfg", "scratchdet300_r34_voc12.cfg", "scratchdet300_r34_coco.cfg",
            "scratchdet300_r34_coco2voc07.cfg", "scratchdet300_r18_voc07.cfg", "shapes_demo.cfg"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses_and_builds_at_its_real_size(path):
    cfg = load(path, *OWN_DATA) if "own_data" in path else load(path)
    if not cfg.model.num_classes:  # the own-data configs take the count from the data: any will do here
        cfg = config.replace(cfg, model__num_classes=3)
    model = build(cfg)
    maps = ssd.feature_map_sizes(model)
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)
    assert model.output["box_deltas"].shape[1] == len(anchors)
    assert model.output["cls_logits"].shape[2] == cfg.model.num_classes + 1
    if cfg.model.image_size == 300:
        assert maps == PAPER_MAPS  # the paper keeps SSD300's levels for every variant (Fig. 3)
        assert len(anchors) == 8732


def _conv(k, c_in, c_out):
    return k * k * c_in * c_out


def _bn(c):
    return 2 * c  # gamma, beta


def test_tiny_root_resnet18_parameter_count_by_hand():
    # width 1/16: root 4 ch, stages 4/8/16/32, extras 8; 2 classes + background; 64x64 input.
    cfg = tiny_cfg()
    root = _conv(3, 3, 4) + _bn(4) + 2 * (_conv(3, 4, 4) + _bn(4))
    conv2 = 2 * 2 * (_conv(3, 4, 4) + _bn(4))

    def stage(c_in, c):
        first = _conv(3, c_in, c) + _conv(3, c, c) + _conv(1, c_in, c) + 3 * _bn(c)
        return first + 2 * (_conv(3, c, c) + _bn(c))

    extras = stage(32, 8) - 2 * (_conv(3, 8, 8) + _bn(8)) + 3 * (stage(8, 8) - 2 * (_conv(3, 8, 8) + _bn(8)))
    head = 0
    for c, k in zip((16, 32, 8, 8, 8, 8), (4, 6, 6, 6, 4, 4)):
        head += _conv(3, c, 4 * k) + _bn(4 * k) + _conv(3, c, 3 * k) + _bn(3 * k)
    expected = root + conv2 + stage(4, 8) + stage(8, 16) + stage(16, 32) + extras + head
    assert expected == 78_200
    model = build(cfg)
    assert ssd.num_trainable_params(model) == expected
    assert ssd.feature_map_sizes(model) == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize("name, params, macs", [
    ("scratchdet300_r34_voc07.cfg", 24.59e6, 33.30e9),  # docs/PAPER.md#model-size
    ("scratchdet300_r18_voc07.cfg", 14.48e6, 19.81e9),
    ("scratchdet300_r34_coco.cfg", 28.19e6, 34.76e9),
])
def test_paper_networks_match_the_derived_size(name, params, macs):
    model = build(load(os.path.join(ROOT, "configs", name)))
    assert abs(ssd.num_trainable_params(model) - params) / params < 0.005
    assert abs(ssd.conv_macs(model) - macs) / macs < 0.01


def test_original_vgg16_ssd300_has_ssd_caffe_parameter_count():
    # SSD300 VGG16 on VOC (conv4_3 L2Norm, fc6/fc7 atrous, biases): 26,285,486 parameters.
    model = build(load(os.path.join(ROOT, "configs/ablations/table1_none_lr0.001.cfg")))
    assert ssd.num_trainable_params(model) == 26_285_486
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


@pytest.mark.parametrize("bn, backbone_bn, head_bn", [
    ("none", 0, 0), ("head", 0, 12), ("backbone", 23, 0), ("both", 23, 12)])
def test_table1_switches_bn_in_backbone_and_head_independently(bn, backbone_bn, head_bn):
    model = build(load(os.path.join(ROOT, f"configs/ablations/table1_{bn}_lr0.01.cfg")))
    bns = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # VGG16 body 13 convs + fc6, fc7 + 8 extra convs = 23; head: loc + conf on 6 levels = 12.
    assert len([n for n in bns if not n.startswith("head_")]) == backbone_bn
    assert len([n for n in bns if n.startswith("head_")]) == head_bn
    assert any(layer.name == "conv4_3_norm" for layer in model.layers) == (backbone_bn == 0)


def _root_convs(model):
    return [layer for layer in model.layers if layer.name.startswith("root_conv") and
            isinstance(layer, keras.layers.Conv2D)]


@pytest.mark.parametrize("row, kernel, depth, stride", [
    ("s2_7x7", 7, 1, 2), ("s2_3x3x3", 3, 3, 2), ("s1_7x7", 7, 1, 1), ("s1_3x3", 3, 1, 1), ("s1_3x3x5", 3, 5, 1)])
def test_table2_rows_build_the_named_root(row, kernel, depth, stride):
    model = build(load(os.path.join(ROOT, f"configs/ablations/table2_{row}.cfg")))
    convs = _root_convs(model)
    assert len(convs) == depth
    assert convs[0].kernel.shape[:2] == (kernel, kernel) and convs[0].strides == (stride, stride)
    assert all(c.strides == (1, 1) for c in convs[1:])
    # The stride-2 root gives conv2_x at 75x75; the stride-1 root at 150x150.
    conv2_out = model.get_layer("conv2_1_out").output.shape[1]
    assert conv2_out == (75 if stride == 2 else 150)
    assert ssd.feature_map_sizes(model) == PAPER_MAPS


def test_resnet18a_removes_the_max_pool():
    model = build(load(os.path.join(ROOT, "configs/ablations/fig3_resnet18a.cfg")))
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert model.get_layer("conv2_1_out").output.shape[1] == 150
    assert ssd.feature_map_sizes(model) == PAPER_MAPS


def test_forward_pass_shapes_and_float32_outputs_under_mixed_precision():
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = ssd.build_model(tiny_cfg().model, tiny_cfg().anchors)
        out = model(np.zeros((2, 64, 64, 3), np.float32), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    a = len(ssd.model_anchors(model, tiny_cfg().anchors, 64))
    assert tuple(out["box_deltas"].shape) == (2, a, 4) and tuple(out["cls_logits"].shape) == (2, a, 3)
    assert out["box_deltas"].dtype == "float32" and out["cls_logits"].dtype == "float32"


def test_any_input_size_gives_matching_anchors():
    for size in (96, 128, 200, 512):
        cfg = config.replace(tiny_cfg(), model__image_size=size)
        model = build(cfg)
        assert model.output["cls_logits"].shape[1] == len(ssd.model_anchors(model, cfg.anchors, size))


def test_stride2_conv_pads_symmetrically_like_caffe():
    # A 3x3 stride-2 conv whose kernel picks the centre tap samples input[2i, 2j] with Caffe's
    # pad 1; TF 'same' would sample input[2i+1, 2j+1] on this even-sized input.
    keras.backend.clear_session()
    x = keras.Input((6, 6, 1))
    y = blocks.conv(x, 1, 3, stride=2, pad=1, name="c")
    model = keras.Model(x, y)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    model.get_layer("c").set_weights([kernel])
    image = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)
    np.testing.assert_array_equal(model(image).numpy()[0, ..., 0], image[0, ::2, ::2, 0])


def test_valid_3x3_to_1x1_extra_keeps_the_shortcut_on_the_window_centre():
    keras.backend.clear_session()
    x = keras.Input((3, 3, 1))
    y = blocks.basic_block(x, 1, blocks.Norm(enabled=False), stride=2, valid=True, name="e")
    model = keras.Model(x, y)
    assert tuple(y.shape[1:]) == (1, 1, 1)
    for layer in model.layers:  # silence the 3x3 branch, make the shortcut an identity
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.zeros(layer.kernel.shape, np.float32)
            if layer.name == "e_short":
                kernel[...] = 1.0
            layer.set_weights([kernel, np.zeros(layer.bias.shape, np.float32)])
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    assert model(image).numpy().item() == 4.0  # the centre pixel


def test_caffe_xavier_init_is_uniform_fan_in():
    keras.backend.clear_session()
    model = build(tiny_cfg())
    kernel = model.get_layer("conv5_1_conv2").kernel.numpy()  # 3x3, 32 -> 32
    limit = np.sqrt(3.0 / (3 * 3 * 32))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert model.get_layer("conv5_1_conv2").bias is None  # no conv bias before BN


def test_gaussian_head_init_draws_prediction_convs_from_n_0_001_only():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build(tiny_cfg(head_init="gaussian"))
    heads = [layer.kernel.numpy().ravel() for layer in model.layers
             if layer.name.startswith("head_") and isinstance(layer, keras.layers.Conv2D)]
    values = np.concatenate(heads)
    assert values.size > 5000 and abs(values.std() - 0.01) < 0.0005 and abs(values.mean()) < 0.0005
    kernel = model.get_layer("conv5_1_conv2").kernel.numpy()  # the backbone stays xavier
    assert np.abs(kernel).max() <= np.sqrt(3.0 / (3 * 3 * 32))
    with pytest.raises(config.ConfigError, match="model.head_init"):
        config.ModelConfig(head_init="he")


def test_model_summary_tool_reports_paper_numbers():
    run = run_tool("model_summary", "--flagfile=configs/scratchdet300_r34_voc07.cfg")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert abs(result["params"] - 24.59e6) / 24.59e6 < 0.005
    assert abs(result["macs"] - 33.30e9) / 33.30e9 < 0.01
    assert result["feature_maps"] == [list(s) for s in PAPER_MAPS]
    assert result["num_anchors"] == 8732


def test_zero_init_residual_blocks_start_as_their_shortcut():
    cfg = tiny_config(model__num_classes=3, model__zero_init_residual=True)
    model = ssd.build_model(cfg.model, cfg.anchors)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in ("conv2_1_out", "conv2_2_out")])
    x = np.random.default_rng(0).normal(0, 50, (2, 64, 64, 3)).astype(np.float32)
    for training in (False, True):
        block_in, block_out = (t.numpy() for t in probe(x, training=training))
        # Identity shortcut and a zero residual branch: ReLU(x + 0) = x for the post-ReLU input x.
        np.testing.assert_allclose(block_out, block_in, atol=1e-6)
    assert float(np.abs(model.get_layer("conv2_2_conv2_bn").gamma.numpy()).max()) == 0.0
    assert float(model.get_layer("conv2_2_conv1_bn").gamma.numpy().min()) == 1.0  # only the branch's last BN


def _keras_conv_and_direct(x, **kwargs):
    keras_conv = keras.layers.Conv2D(6, 3, **kwargs)
    direct = blocks.DilatedConv2D.from_config(keras_conv.get_config())
    keras_conv.build(x.shape)
    direct.build(x.shape)
    direct.set_weights(keras_conv.get_weights())
    return keras_conv, direct


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_direct_dilated_conv_equals_keras_conv_forward_and_backward(padding):
    x = tf.random.stateless_normal([2, 19, 19, 8], [0, 1])
    keras_conv, direct = _keras_conv_and_direct(x, padding=padding, dilation_rate=6)

    def grads(layer, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))  # a loss whose gradient differs per output element
        return [y] + tape.gradient(loss, [x, layer.kernel])

    for run in (grads, tf.function(grads)):  # eagerly and in a graph
        for got, want in zip(run(direct, x), run(keras_conv, x)):  # output, d/dx, d/dkernel
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(tf.reduce_max(tf.abs(want))))


def test_vgg16_gradients_with_the_direct_dilated_fc6_equal_keras_convolution(monkeypatch):
    cfg = tiny_config(model__backbone="vgg16", model__width=0.0625, model__image_size=64)

    def gradients():
        keras.utils.set_random_seed(0)
        model = ssd.build_model(cfg.model, cfg.anchors)
        images = tf.random.stateless_normal([2, 64, 64, 3], [1, 2]) * 50.0
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            loss = tf.reduce_sum(tf.sin(out["cls_logits"])) + tf.reduce_sum(tf.sin(out["box_deltas"]))
        return model, tape.gradient(loss, model.trainable_variables)

    direct_model, direct = gradients()
    assert isinstance(direct_model.get_layer("fc6"), blocks.DilatedConv2D)
    monkeypatch.setattr(blocks, "DilatedConv2D", keras.layers.Conv2D)  # the SpaceToBatch route
    plain_model, plain = gradients()
    assert type(plain_model.get_layer("fc6")) is keras.layers.Conv2D
    for got, want, var in zip(direct, plain, plain_model.trainable_variables):
        scale = float(tf.reduce_max(tf.abs(want))) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=var.path)


def test_dilated_conv_keeps_the_keras_route_where_the_direct_gradient_is_missing(monkeypatch):
    # TF's CPU kernels without oneDNN cannot differentiate a direct dilated conv: the layer must then
    # fall back to Keras' SpaceToBatch route and still train.
    monkeypatch.setattr(blocks, "direct_dilated_conv_trains", lambda: False)
    x = tf.random.stateless_normal([1, 19, 19, 8], [0, 2])
    keras_conv, direct = _keras_conv_and_direct(x, padding="same", dilation_rate=6)
    calls = []
    monkeypatch.setattr(tf.nn, "conv2d", lambda *a, **k: calls.append(1))  # must not be used
    with tf.GradientTape() as tape:
        y = direct(x)
        loss = tf.reduce_sum(y)
    assert not calls and tape.gradient(loss, direct.kernel) is not None
    np.testing.assert_allclose(y, keras_conv(x), rtol=1e-5, atol=1e-5)
