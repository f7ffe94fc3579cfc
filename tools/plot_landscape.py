"""Plots the optimization landscape of training runs (paper Figures 1 and 7) into one PNG.

The code is ``scratchdet_tf/cli/plot_landscape.py``; ``scratchdet plot_landscape ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import plot_landscape

if __name__ == "__main__":
    plot_landscape.run()
