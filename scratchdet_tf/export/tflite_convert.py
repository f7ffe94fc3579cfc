"""One TFLite conversion in a process of its own: ``python -m scratchdet_tf.export.tflite_convert``.

The TFLite converter and quantizer are C++ that can end the whole process (a segmentation fault in
the int8 quantizer on some models, an abort on a failed check). ``export_tflite`` runs each
conversion here, so such a crash costs that one file, not the export: the SavedModel and the other
TFLite files are still written, and the parent reports what failed.

    python -m scratchdet_tf.export.tflite_convert SAVED_MODEL_DIR MODE OUT_FILE [CALIBRATION.npy]

Exit status 0 with ``OUT_FILE`` written; 2 with one line on stderr for a conversion error
(``tflite.convert``'s ``ValueError``); anything else is a crash.
"""

from __future__ import annotations

import sys


def main(argv) -> int:
    if len(argv) not in (4, 5):
        sys.stderr.write(__doc__)
        return 64
    saved_model_dir, mode, out_file = argv[1:4]
    import numpy as np

    from scratchdet_tf.export import tflite

    representative = None
    if len(argv) == 5:
        images = np.load(argv[4])  # uint8 [n, 1, S, S, 3]

        def representative():
            return iter(images)

    try:
        flatbuffer = tflite.convert(saved_model_dir, mode, representative)
    except ValueError as err:
        sys.stderr.write(f"{err}\n")
        return 2
    with open(out_file, "wb") as f:
        f.write(flatbuffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
