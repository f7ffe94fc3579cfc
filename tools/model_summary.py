"""Prints a model's parameters, conv MACs, feature maps and priors per part and per level.

The code is ``scratchdet_tf/cli/model_summary.py``; ``scratchdet model_summary ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import model_summary

if __name__ == "__main__":
    model_summary.run()
