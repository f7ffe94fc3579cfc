"""Prints a model's parameters, conv MACs, feature maps and priors per part and per level.

    python tools/model_summary.py --flagfile=configs/scratchdet300_r34_voc07.cfg

Last line: {"params": ..., "macs": ..., "feature_maps": [[h, w], ...], "num_anchors": ...}.
"""

import collections
import json

from absl import flags

from scratchdet_tf.cli import config_flags
from scratchdet_tf.models import ssd

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)


def _part(layer_name: str) -> str:
    if layer_name.startswith("head_"):
        return "_".join(layer_name.split("_")[:2])  # head_loc / head_conf
    return layer_name.split("_")[0]  # root, conv2..conv9, extra1..4, fc6, fc7


def main(argv):
    del argv
    cfg = config_flags.with_class_count(config_flags.config_or_exit(FLAGS))
    model = ssd.build_model(cfg.model, cfg.anchors)
    fm_sizes = ssd.feature_map_sizes(model)
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)

    params, macs = collections.Counter(), collections.Counter()
    for layer in model.layers:
        n = sum(int(w.numpy().size) for w in layer.trainable_weights)
        if n:
            params[_part(layer.name)] += n
        m = ssd.conv_macs_of_layer(layer)
        if m:
            macs[_part(layer.name)] += m
    total_params, total_macs = ssd.num_trainable_params(model), ssd.conv_macs(model)

    print(f"{model.name}: {cfg.model.image_size}x{cfg.model.image_size} input, "
          f"{cfg.model.num_classes} classes + background")
    print(f"{'part':<10}{'params':>14}{'MMACs':>12}{'share':>8}")
    for part in dict.fromkeys(list(params) + list(macs)):
        share = 100.0 * macs[part] / max(total_macs, 1)
        print(f"{part:<10}{params[part]:>14,}{macs[part] / 1e6:>12.1f}{share:>7.1f}%")
    print(f"{'total':<10}{total_params:>14,}{total_macs / 1e6:>12.1f}")
    print(f"\n{'level':<7}{'map':>9}{'priors/cell':>13}{'priors':>8}")
    for i, ((h, w), k) in enumerate(zip(fm_sizes, cfg.anchors.anchors_per_location())):
        print(f"{i:<7}{f'{h}x{w}':>9}{k:>13}{h * w * k:>8}")
    print(f"total priors: {len(anchors)}")
    print(json.dumps({
        "params": total_params, "macs": total_macs,
        "feature_maps": [list(s) for s in fm_sizes], "num_anchors": int(len(anchors)),
    }))


def run():
    """``scratchdet model_summary`` and ``python tools/model_summary.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
