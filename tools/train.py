"""Trains a ScratchDet/SSD detector.

The code is ``scratchdet_tf/cli/train.py``; ``scratchdet train ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import train

if __name__ == "__main__":
    train.run()
