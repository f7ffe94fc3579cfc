"""Runs an exported model on image files and draws the detections.

The code is ``scratchdet_tf/cli/detect.py``; ``scratchdet detect ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import detect

if __name__ == "__main__":
    detect.run()
