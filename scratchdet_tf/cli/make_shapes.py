"""Writes the synthetic shapes dataset: D/train and D/val, each COCO instances.json + JPEGs (or as VOC / YOLO).

    python tools/make_shapes.py --out_dir=/tmp/shapes [--num_train=2000 --num_val=300 --seed=0]
    python tools/make_shapes.py --out_dir=data/shapes_large --object_size=0.25,0.6 --max_objects=3  # easier
    python tools/make_shapes.py --out_dir=/tmp/shapes_voc --layout=voc --class_names=disc,box,wedge,plus,hoop
    python tools/make_shapes.py --out_dir=/tmp/shapes_yolo --layout=yolo

Read it with ``--data.train_source=shapes:/tmp/shapes`` (val split for evaluation); the last line
printed is a JSON summary whose ``train_source`` and ``val_source`` are the URIs of the layout
written (``voc:D:train``, ``yolo:D/data.yaml:val``, ...).
"""

import json
import time

from absl import app, flags

from scratchdet_tf.cli import config_flags
from scratchdet_tf.data import shapes

flags.DEFINE_string("out_dir", None, "Dataset root; train/ and val/ are written under it.", required=True)
flags.DEFINE_integer("num_train", 2000, "Training images.")
flags.DEFINE_integer("num_val", 300, "Validation images.")
flags.DEFINE_integer("seed", 0, "Dataset seed; the same seed writes the same files.")
flags.DEFINE_list("object_size", ["0.05", "0.6"], "min,max object side as a fraction of the image's shorter side.")
flags.DEFINE_integer("max_objects", 6, "Objects per image: 1..max_objects.")
flags.DEFINE_enum("layout", "coco", list(shapes.LAYOUTS),
                  "coco: D/<split>/instances.json; voc: a VOC2007-like devkit in D; yolo: an Ultralytics dataset "
                  "(D/data.yaml, D/images/<split>, D/labels/<split>).")
flags.DEFINE_list("class_names", [], "Names of the 5 classes (circle,square,triangle,cross,ring); empty: those.")


def main(argv):
    del argv
    f = flags.FLAGS
    start = time.perf_counter()
    try:
        object_size = tuple(float(v) for v in f.object_size)
        if len(object_size) != 2:
            raise ValueError(f"--object_size takes two numbers min,max; got {f.object_size}")
        names = tuple(f.class_names) or shapes.CLASS_NAMES
        shapes.write_dataset(f.out_dir, num_train=f.num_train, num_val=f.num_val, seed=f.seed,
                             object_size=object_size, max_objects=f.max_objects, layout=f.layout, class_names=names)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    uris = shapes.source_uris(f.out_dir, f.layout)
    print(json.dumps({"out_dir": f.out_dir, "num_train": f.num_train, "num_val": f.num_val,
                      "object_size": list(object_size), "max_objects": f.max_objects, "layout": f.layout,
                      "class_names": list(names), "train_source": uris["train"], "val_source": uris["val"],
                      "seconds": round(time.perf_counter() - start, 2)}))


def run():
    """``scratchdet make_shapes`` and ``python tools/make_shapes.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
