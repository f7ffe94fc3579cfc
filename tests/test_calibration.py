"""calibration: the int8 calibration images, resized to the input and stopped at the count."""

import numpy as np
import pytest
from conftest import synthetic_batch
from PIL import Image

from scratchdet_tf.export import calibration

SIZE = 64

def test_representative_images_resize_and_stop(tmp_path):
    for i in range(3):
        Image.fromarray(synthetic_batch(1, size=40 + i, seed=i)[0]).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    generate = calibration.representative_images(lambda: calibration.folder_images(str(tmp_path)), SIZE, 2)
    batches = list(generate())
    assert len(batches) == 2 and all(b.shape == (1, SIZE, SIZE, 3) and b.dtype == np.uint8 for b in batches)
    empty = calibration.representative_images(lambda: iter(()), SIZE, 2)
    with pytest.raises(ValueError, match="no calibration images"):
        list(empty())
