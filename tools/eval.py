"""Evaluates a trained model (checkpoint or SavedModel), or scores detection files without a model.

The code is ``scratchdet_tf/cli/eval.py``; ``scratchdet eval ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import eval

if __name__ == "__main__":
    eval.run()
