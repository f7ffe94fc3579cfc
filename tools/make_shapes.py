"""Writes the synthetic shapes dataset: D/train and D/val, each COCO instances.json + JPEGs.

    python tools/make_shapes.py --out_dir=/tmp/shapes [--num_train=2000 --num_val=300 --seed=0]

Read it with ``--data.train_source=shapes:/tmp/shapes`` (val split for evaluation).
"""

import json
import time

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from absl import app, flags

from scratchdet_tf.data import shapes

flags.DEFINE_string("out_dir", None, "Dataset root; train/ and val/ are written under it.", required=True)
flags.DEFINE_integer("num_train", 2000, "Training images.")
flags.DEFINE_integer("num_val", 300, "Validation images.")
flags.DEFINE_integer("seed", 0, "Dataset seed; the same seed writes the same files.")


def main(argv):
    del argv
    f = flags.FLAGS
    start = time.perf_counter()
    shapes.write_dataset(f.out_dir, num_train=f.num_train, num_val=f.num_val, seed=f.seed)
    print(json.dumps({"out_dir": f.out_dir, "num_train": f.num_train, "num_val": f.num_val,
                      "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    app.run(main)
