"""Writes the synthetic shapes dataset: D/train and D/val, each COCO instances.json + JPEGs.

The code is ``scratchdet_tf/cli/make_shapes.py``; ``scratchdet make_shapes ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import make_shapes

if __name__ == "__main__":
    make_shapes.run()
