"""Runs an exported model on image files and draws the detections.

    python tools/detect.py --model=exports/demo/1 --images=photos/ --out_dir=out [--score_threshold=0.3]
    python tools/detect.py --model=exports/demo/1/model_int8.tflite --images=photo.jpg --out_dir=out

--model is a SavedModel folder written by tools/export.py or a .tflite file beside one (class names
come from the export). Writes <out_dir>/<image name>.png with boxes, class names and scores, and
<out_dir>/detections.json (per image: file, height, width, detections with normalized
[ymin, xmin, ymax, xmax] boxes, 0-based label, class name, score). Unreadable images are skipped
with a warning naming them. Last line: {"images": n, "skipped": k, "detections": d, "out_dir": ...}.
"""

import json
import os
import sys

from absl import app, flags, logging
from PIL import Image

from scratchdet_tf.cli import config_flags
from scratchdet_tf.detector import Detector, load_image
from scratchdet_tf.export import calibration

flags.DEFINE_string("model", None, "SavedModel folder or .tflite file.")
flags.DEFINE_string("images", None, "An image file or a folder of images (jpg, jpeg, png, bmp, gif).")
flags.DEFINE_string("out_dir", None, "Output folder for the drawn PNGs and detections.json.")
flags.DEFINE_float("score_threshold", 0.3, "Keep detections scoring at least this.")
flags.DEFINE_integer("num_threads", 2, "TFLite interpreter threads.")
FLAGS = flags.FLAGS


def image_files(path: str) -> list:
    """``path`` itself, or the image files of folder ``path`` (sorted).

    Raises:
      FileNotFoundError: naming ``path``.
    """
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        return [os.path.join(path, name) for name in sorted(os.listdir(path))
                if name.lower().endswith(calibration.IMAGE_EXTENSIONS)]
    raise FileNotFoundError(f"--images={path} is neither a file nor a folder")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not (FLAGS.model and FLAGS.images and FLAGS.out_dir):
        raise app.UsageError("--model, --images and --out_dir are required")
    try:
        files = image_files(FLAGS.images)
        detector = Detector.from_export(FLAGS.model, score_threshold=FLAGS.score_threshold,
                                        num_threads=FLAGS.num_threads)
    except (OSError, ValueError) as err:
        sys.exit(f"detect.py: error: {err}")
    os.makedirs(FLAGS.out_dir, exist_ok=True)

    results, skipped, num_detections, used_names = [], [], 0, set()
    for path in files:
        try:
            image = load_image(path)
        except (OSError, ValueError) as err:
            logging.warning("skipping unreadable image %s: %s", path, err)
            skipped.append(path)
            continue
        result = detector.predict(image)
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        if name in used_names:  # a.jpg and a.png in one folder
            name = os.path.basename(path).replace(".", "_") + ".png"
        used_names.add(name)
        Image.fromarray(detector.draw(image, result)).save(os.path.join(FLAGS.out_dir, name))
        num_detections += len(result)
        height, width = result.image_size
        results.append({"file": path, "output": name, "height": height, "width": width,
                        "detections": result.to_json()})
        print(f"{path}: {len(result)} detections >= {FLAGS.score_threshold}")
    if skipped:
        logging.warning("skipped %d unreadable image(s): %s", len(skipped), ", ".join(skipped))
    with open(os.path.join(FLAGS.out_dir, "detections.json"), "w") as f:
        json.dump({"model": FLAGS.model, "score_threshold": FLAGS.score_threshold, "images": results,
                   "skipped": skipped}, f, indent=1)
    print(json.dumps({"images": len(results), "skipped": len(skipped), "detections": num_detections,
                      "out_dir": FLAGS.out_dir}))


def run():
    """``scratchdet detect`` and ``python tools/detect.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
