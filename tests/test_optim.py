"""Learning-rate schedule and coupled (Caffe) weight decay, against hand-computed values."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from scratchdet_tf import config
from scratchdet_tf.models import ssd
from scratchdet_tf.training import optim


@pytest.mark.parametrize("step, lr", [(0, 0.05), (44_999, 0.05), (45_000, 0.005), (74_999, 0.005),
                                      (75_000, 0.0005), (95_000, 0.00005), (99_999, 0.00005)])
def test_paper_voc_schedule_at_the_boundaries(step, lr):
    schedule = optim.learning_rate_schedule(config.TrainConfig())  # 0.05, /10 at 45k, 75k, 95k
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6)


def test_linear_warmup_from_a_third():
    schedule = optim.WarmupMultiStep(0.3, [100], decay=0.1, warmup_steps=10, warmup_factor=1 / 3)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(5)) == pytest.approx(0.3 * (1 / 3 + 2 / 3 * 0.5))
    assert float(schedule(10)) == pytest.approx(0.3)
    assert float(schedule(100)) == pytest.approx(0.03)


def test_coupled_weight_decay_matches_a_hand_computed_sgd_momentum_update():
    # Caffe: v <- m v + lr (g + wd w); w <- w - v. Data gradient g = 1 (loss = sum(w)).
    lr, m, wd = 0.1, 0.9, 0.5
    w = tf.Variable([2.0, -4.0])
    sgd = keras.optimizers.SGD(lr, momentum=m)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w) + optim.l2_penalty([w], wd)
        sgd.apply_gradients([(tape.gradient(loss, w), w)])
    w0 = np.array([2.0, -4.0])
    v1 = lr * (1 + wd * w0)
    w1 = w0 - v1
    v2 = m * v1 + lr * (1 + wd * w1)
    np.testing.assert_allclose(w.numpy(), w1 - v2, rtol=1e-6)


def test_decay_covers_kernels_and_backbone_bn_but_not_head_bn_or_biases():
    keras.backend.clear_session()
    cfg = tiny_config(model__num_classes=2)
    model = ssd.build_model(cfg.model, cfg.anchors)
    decayed = {id(v) for v in optim.decayed_variables(model)}
    for layer in model.layers:
        for v in layer.trainable_weights:
            head_bn = layer.name.startswith("head_") and isinstance(layer, keras.layers.BatchNormalization)
            bias = isinstance(layer, keras.layers.Conv2D) and v is layer.bias
            assert (id(v) in decayed) == (not head_bn and not bias), (layer.name, v.name)


def test_l2_penalty_is_half_wd_sum_of_squares():
    assert float(optim.l2_penalty([tf.constant([3.0, 4.0])], 0.1)) == pytest.approx(0.5 * 0.1 * 25)


def test_cosine_schedule_against_hand_computed_values():
    # base 0.1, warm-up 10 steps from 1/3, cosine to 1 % of base at step 110.
    schedule = optim.WarmupCosine(0.1, total_steps=110, final_factor=0.01, warmup_steps=10, warmup_factor=1 / 3)
    assert float(schedule(0)) == pytest.approx(0.1 / 3)
    assert float(schedule(5)) == pytest.approx(0.1 * (1 / 3 + 2 / 3 * 0.5))
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(60)) == pytest.approx(0.1 * (0.01 + 0.99 * 0.5), rel=1e-5)  # half way: cos(pi/2) = 0
    assert float(schedule(110)) == pytest.approx(0.001, rel=1e-5)
    assert float(schedule(500)) == pytest.approx(0.001, rel=1e-5)  # held after the end


def test_config_selects_the_cosine_schedule():
    cfg = config.TrainConfig(lr_schedule="cosine", max_steps=100, learning_rate=0.2, lr_final_factor=0.0)
    schedule = optim.learning_rate_schedule(cfg)
    assert isinstance(schedule, optim.WarmupCosine)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(config.ConfigError, match="train.lr_schedule"):
        config.TrainConfig(lr_schedule="linear")
