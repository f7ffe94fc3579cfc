"""Micro-benchmarks: python tools/benchmark.py <mode> [--flags]; the last line printed is one JSON object.

The code is ``scratchdet_tf/cli/benchmark.py``; ``scratchdet benchmark ...`` runs the same. Usage: ``--help``.
"""

from scratchdet_tf.cli import benchmark

if __name__ == "__main__":
    benchmark.run()
