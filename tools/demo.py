"""The demo: synthetic shapes data → train → evaluate → export a SavedModel → draw detections.

The code is ``scratchdet_tf/cli/demo.py``; ``scratchdet demo ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import demo

if __name__ == "__main__":
    demo.run()
