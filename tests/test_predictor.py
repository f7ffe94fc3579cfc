"""predictor: one predict function for a SavedModel or a .tflite file, the export contract mapped, bad paths named."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import reference_detections, synthetic_batch

from scratchdet_tf.export import predictor


def test_predict_fn_matches_signature_and_rejects_bad_input(exported):
    predict = predictor.load_predict_fn(exported["dir"])
    batch = synthetic_batch(2, seed=21)
    got = predict(batch)
    want = reference_detections(exported, batch)
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-5)
    assert predict(batch[0])["boxes"].shape == (1, 20, 4)
    with pytest.raises(ValueError, match="expected uint8 RGB images"):
        predict(batch.astype(np.float32))


def test_missing_or_bad_model_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        predictor.load_predict_fn(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        predictor.load_predict_fn(str(tmp_path))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="garbage.tflite"):
        predictor.load_predict_fn(str(garbage))


@pytest.mark.slow
def test_regular_nms_predict_fn_avoids_the_litert_thread_bug(exported_tflite):
    # LiteRT's multi-threaded regular NMS skips class index T with T threads (tensorflow#56058);
    # tflite_predict_fn runs such a model single-threaded, so 2 threads give the 1-thread result.
    path = os.path.join(exported_tflite["regular_dir"], "model_fp32.tflite")
    image = synthetic_batch(1, seed=1)
    one = predictor.load_predict_fn(path, num_threads=1)(image)
    two = predictor.load_predict_fn(path, num_threads=2)(image)
    np.testing.assert_array_equal(one["classes"], two["classes"])
    assert 2 in one["classes"][0, :int(one["num_detections"][0])]


def test_saved_model_predict_fn_maps_the_od_api_export_contract(tmp_path):
    class Exported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
        def serve(self, images):
            b = tf.shape(images)[0]
            return {"detection_boxes": tf.tile([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]], [b, 1, 1]),
                    "detection_scores": tf.tile([[0.8, 0.0]], [b, 1]),
                    "detection_classes": tf.tile([[3.0, 0.0]], [b, 1]), "num_detections": tf.fill([b], 1.0)}

    module = Exported()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    predict = predictor.load_predict_fn(str(tmp_path / "sm"))
    out = predict(np.zeros((2, 20, 30, 3), np.uint8))
    np.testing.assert_array_equal(out["num_detections"], [1, 1])
    assert out["classes"][:, 0].tolist() == [2, 2]  # 1-based float class 3 -> label 2
    np.testing.assert_allclose(out["boxes"][1, 0], [0.1, 0.2, 0.5, 0.6])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        predictor.load_predict_fn(str(tmp_path / "nowhere"))
