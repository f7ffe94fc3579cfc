"""Exports a training run as a serving SavedModel (+ optional TFLite models).

The code is ``scratchdet_tf/cli/export.py``; ``scratchdet export ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import export

if __name__ == "__main__":
    export.run()
