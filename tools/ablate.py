"""Runs a paper ablation grid (Table 1 or Table 2): trains and evaluates every cell, writes a Markdown table.

The code is ``scratchdet_tf/cli/ablate.py``; ``scratchdet ablate ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import ablate

if __name__ == "__main__":
    ablate.run()
