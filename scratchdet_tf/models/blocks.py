"""Shared building blocks: Caffe-style conv (+BN, +ReLU), residual basic block, L2Norm.

Only ``keras.layers`` / ``keras.ops``, so the networks build under any Keras 3 backend; the one
TensorFlow-specific path (``DilatedConv2D``'s direct dilated convolution) falls back to Keras'
own elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools

import keras


def caffe_xavier() -> keras.initializers.Initializer:
    """Caffe "xavier": U(+-sqrt(3 / fan_in)), fan_in = C_in * k * k (docs/PAPER.md#initialization-and-bn).

    A new instance per layer, created after ``keras.utils.set_random_seed``, so the
    initial weights are reproducible from the seed.
    """
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="uniform")


@dataclasses.dataclass(frozen=True)
class Norm:
    """How a conv is normalized: BN on/off and its hyper-parameters."""

    enabled: bool = True
    momentum: float = 0.99
    epsilon: float = 1e-5
    synchronized: bool = False
    # Residual blocks start as identities: the BN closing each residual branch starts at gamma = 0.
    zero_init_residual: bool = False

    def layer(self, name: str, zero_gamma: bool = False) -> keras.layers.Layer:
        return keras.layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, synchronized=self.synchronized,
            gamma_initializer="zeros" if zero_gamma else "ones", name=name,
        )


def kernel_initializer(init: str = "xavier") -> keras.initializers.Initializer:
    """``"xavier"``: ``caffe_xavier()``; ``"gaussian"``: Caffe's gaussian filler with std 0.01."""
    if init == "gaussian":
        return keras.initializers.RandomNormal(stddev=0.01)
    if init == "xavier":
        return caffe_xavier()
    raise ValueError(f"unknown conv init {init!r}; allowed: xavier, gaussian")


@keras.saving.register_keras_serializable(package="scratchdet_tf")
class DilatedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose dilated convolution is one ``tf.nn.conv2d`` with ``dilations``.

    Keras' TensorFlow backend runs a dilated conv through ``tf.nn.convolution``, i.e. SpaceToBatch +
    conv + BatchToSpace; oneDNN runs the dilated kernel directly, forward and backward, with the
    same result up to float rounding (SSD-VGG16's fc6, 19x19x512 -> 1024 at batch 8 on 2 cores:
    forward + backward 630 -> 190 ms; docs/DECISIONS.md#dilated-convolutions). Same weights and
    names as ``keras.layers.Conv2D``, so checkpoints of either load into the other.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Decided when the layer is made (eagerly, as models are built), not while a step is traced.
        self._direct = (max(self.dilation_rate) > 1 and self.groups == 1 and self.data_format == "channels_last"
                        and keras.backend.backend() == "tensorflow" and direct_dilated_conv_trains())

    def convolution_op(self, inputs, kernel):
        if not self._direct:
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf  # the TensorFlow backend only

        return tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper(),
                            dilations=self.dilation_rate)


def direct_dilated_conv_trains() -> bool:
    """Whether this TensorFlow build differentiates ``tf.nn.conv2d`` with ``dilations`` > 1 on its default device.

    oneDNN CPU kernels (x86 Linux builds) and GPUs do; TF's own CPU kernels without oneDNN
    (``TF_ENABLE_ONEDNN_OPTS=0``, some macOS builds) reject it, and ``DilatedConv2D`` then keeps Keras' route.
    Probed eagerly once per process on a 7x7 input (milliseconds); inside a graph that is being traced
    it cannot be probed and says False.
    """
    import tensorflow as tf

    if not tf.executing_eagerly():
        return False
    return _probe_direct_dilated_gradient()


@functools.cache
def _probe_direct_dilated_gradient() -> bool:
    import tensorflow as tf

    x, w = tf.ones([1, 7, 7, 1]), tf.ones([3, 3, 1, 1])
    try:
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = tf.nn.conv2d(x, w, 1, "SAME", dilations=2)
        grads = tape.gradient(y, [x, w])
        return all(g is not None and bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False


def conv(x, filters: int, kernel: int, *, stride: int = 1, pad: int | None = None, dilation: int = 1,
         use_bias: bool = False, init: str = "xavier", name: str):
    """A conv with Caffe's symmetric zero padding (``pad`` pixels on every side).

    TF's ``'same'`` pads only bottom/right for stride 2 on even inputs, shifting the grid
    by a pixel versus Caffe; so stride > 1 pads explicitly and convolves ``'valid'``.

    Args:
      x: [B, H, W, C] tensor.
      pad: pixels per side; ``None`` means (kernel - 1) // 2 * dilation ("same" size at stride 1).
    """
    if pad is None:
        pad = (kernel - 1) // 2 * dilation
    if stride == 1 and pad == (kernel - 1) // 2 * dilation:
        padding = "same"  # symmetric for odd kernels at stride 1
    else:
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    layer = DilatedConv2D if dilation > 1 else keras.layers.Conv2D
    return layer(
        filters, kernel, strides=stride, padding=padding, dilation_rate=dilation, use_bias=use_bias,
        kernel_initializer=kernel_initializer(init), name=name,
    )(x)


def conv_bn(x, filters: int, kernel: int, norm: Norm, *, stride: int = 1, pad: int | None = None,
            dilation: int = 1, relu: bool = True, init: str = "xavier", zero_gamma: bool = False, name: str):
    """conv → BN → ReLU; without BN the conv gets a bias instead (no conv bias before BN).

    ``zero_gamma`` starts the BN scale at 0 (the last BN of a residual branch, see ``Norm``).
    """
    x = conv(x, filters, kernel, stride=stride, pad=pad, dilation=dilation, use_bias=not norm.enabled, init=init,
             name=name)
    if norm.enabled:
        x = norm.layer(f"{name}_bn", zero_gamma=zero_gamma)(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def basic_block(x, filters: int, norm: Norm, *, stride: int, name: str, valid: bool = False):
    """ResNet v1 (post-activation) basic block: two 3x3 convs plus a shortcut, then ReLU.

    The shortcut is the identity when shape is kept, else a 1x1 conv + BN at the same stride.
    With ``norm.zero_init_residual`` the branch's last BN starts at gamma = 0, so the block starts
    as its shortcut (Goyal et al. 2017, torchvision's ``zero_init_residual``).

    Args:
      valid: the 3x3 stride-2 conv uses no padding (ScratchDet's 3x3 → 1x1 extra block).
        The 1x1 shortcut then first crops one pixel per side, so it samples the centre of
        each 3x3 window and both branches stay aligned (docs/DECISIONS.md#extra-blocks).
    """
    in_channels = x.shape[-1]
    shortcut = x
    if stride != 1 or in_channels != filters or valid:
        if valid:
            shortcut = keras.layers.Cropping2D(1, name=f"{name}_short_crop")(shortcut)
        shortcut = conv_bn(shortcut, filters, 1, norm, stride=stride, pad=0, relu=False, name=f"{name}_short")
    y = conv_bn(x, filters, 3, norm, stride=stride, pad=0 if valid else 1, name=f"{name}_conv1")
    y = conv_bn(y, filters, 3, norm, relu=False, zero_gamma=norm.zero_init_residual, name=f"{name}_conv2")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="scratchdet_tf")
class L2Norm(keras.layers.Layer):
    """SSD's channel-wise L2 normalization with a learned per-channel scale (init 20)."""

    def __init__(self, scale: float = 20.0, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.epsilon = epsilon

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.scale), name="gamma"
        )

    def call(self, x):
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        return x / norm * keras.ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "epsilon": self.epsilon}
