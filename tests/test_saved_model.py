"""saved_model: the SavedModel's signatures against Keras + postprocess.detect, TF Serving REST payloads, bad
requests, and the optimized (frozen) export against the plain one."""

import base64
import io
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import EXPORT_CLASS_NAMES, EXPORT_SIZE, reference_detections, synthetic_batch
from PIL import Image

from scratchdet_tf import config
from scratchdet_tf.export import saved_model


def png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def numpy_outputs(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def test_signatures_take_uint8_images_and_bytes_and_use_od_api_names(exported):
    assert exported["default"].structured_input_signature[1] == {
        "images": tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")}
    assert exported["bytes"].structured_input_signature[1] == {
        "image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")}
    expected = {"detection_boxes": [None, 20, 4], "detection_scores": [None, 20], "detection_classes": [None, 20],
                "num_detections": [None]}
    for signature in (exported["default"], exported["bytes"]):
        outputs = signature.structured_outputs
        assert {k: v.shape.as_list() for k, v in outputs.items()} == expected
        assert all(v.dtype == tf.float32 for v in outputs.values())


@pytest.mark.parametrize("shape", [(2, 80, 100), (1, EXPORT_SIZE, EXPORT_SIZE), (1, 37, 300)])
def test_reloaded_saved_model_equals_keras_plus_detect(exported, shape):
    batch = synthetic_batch(shape[0], seed=sum(shape))
    batch = np.stack([np.asarray(Image.fromarray(im).resize(shape[2:0:-1])) for im in batch])  # [B, H, W, 3]
    got = numpy_outputs(exported["default"](images=tf.constant(batch)))
    want = reference_detections(exported, batch)
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    assert want["num_detections"].min() > 0
    # 5e-5: the export folds BN into the convs (inference_graph), which rounds differently.
    np.testing.assert_allclose(got["detection_scores"], want["scores"], atol=5e-5)
    np.testing.assert_allclose(got["detection_boxes"], want["boxes"], atol=5e-5)
    n = int(want["num_detections"][0])
    np.testing.assert_array_equal(got["detection_classes"][0, :n], want["classes"][0, :n] + 1)  # 1-based
    assert (got["detection_classes"][0, n:] == 0).all() and (got["detection_scores"][0, n:] == 0).all()


def test_serving_bytes_png_equals_serving_default(exported):
    image = synthetic_batch(1, size=90, seed=3)[0]
    from_bytes = numpy_outputs(exported["bytes"](image_bytes=tf.constant([png(image), png(image[:50])])))
    for i, expected_image in enumerate([image, image[:50]]):
        from_pixels = numpy_outputs(exported["default"](images=tf.constant(expected_image[None])))
        for key, value in from_pixels.items():
            np.testing.assert_allclose(from_bytes[key][i], value[0], atol=1e-5, err_msg=key)


def tf_serving_rest_predict(signatures, body: str) -> str:
    """What TF Serving's REST predict does with a row-format request (independent twin of its json codec):
    pick the signature, decode {"b64": ...} to bytes, stack instances into a batch per named input (an
    instance that is not an object is the value of the signature's only input), run, and split every
    output along the batch into {"predictions": [{name: value}, ...]}."""
    request = json.loads(body)
    signature = signatures[request.get("signature_name", "serving_default")]
    input_names = list(signature.structured_input_signature[1])
    columns = {}
    for instance in request["instances"]:
        if not isinstance(instance, dict) or set(instance) == {"b64"}:
            instance = {input_names[0]: instance}
        for name, value in instance.items():
            if isinstance(value, dict) and set(value) == {"b64"}:
                value = base64.b64decode(value["b64"])
            columns.setdefault(name, []).append(value)
    dtypes = {name: spec.dtype for name, spec in signature.structured_input_signature[1].items()}
    outputs = signature(**{name: tf.constant(values, dtypes[name]) for name, values in columns.items()})
    batch = len(request["instances"])
    return json.dumps({"predictions": [{k: v.numpy()[i].tolist() for k, v in outputs.items()} for i in range(batch)]})


def test_serving_bytes_rejects_a_decompression_bomb_fast_and_by_index(exported):
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")  # 400 MP declared in a ~50 KB file
    good = png(synthetic_batch(1, seed=2)[0])
    start = time.time()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 50000000 pixels; larger at batch index:\] "
                                                             r"\[1\].*400000000"):
        exported["bytes"](image_bytes=tf.constant([good, buffer.getvalue()]))
    assert time.time() - start < 5


def test_rest_b64_payload_through_serving_bytes(exported):
    first, second = synthetic_batch(1, size=70, seed=11)[0], synthetic_batch(1, size=50, seed=12)[0]
    body = json.dumps({"signature_name": "serving_bytes", "instances": [
        {"image_bytes": {"b64": base64.b64encode(png(first)).decode()}},
        {"image_bytes": {"b64": base64.b64encode(png(second)).decode()}}]})
    signatures = {"serving_default": exported["default"], "serving_bytes": exported["bytes"]}
    predictions = json.loads(tf_serving_rest_predict(signatures, body))["predictions"]
    assert len(predictions) == 2
    for prediction, image in zip(predictions, [first, second]):
        want = numpy_outputs(exported["default"](images=tf.constant(image[None])))
        assert set(prediction) == set(want)
        np.testing.assert_allclose(prediction["detection_boxes"], want["detection_boxes"][0], atol=1e-5)
        np.testing.assert_allclose(prediction["detection_classes"], want["detection_classes"][0])
        assert prediction["num_detections"] == want["num_detections"][0]


def test_rest_instances_of_pixels_through_serving_default(exported):
    image = synthetic_batch(1, size=40, seed=13)[0]
    body = json.dumps({"instances": [image.tolist()]})  # the row format of a [1, H, W, 3] uint8 input
    prediction = json.loads(tf_serving_rest_predict({"serving_default": exported["default"]}, body))["predictions"][0]
    want = numpy_outputs(exported["default"](images=tf.constant(image[None])))
    np.testing.assert_allclose(prediction["detection_scores"], want["detection_scores"][0], atol=1e-6)


@pytest.mark.parametrize("images_, message", [
    (np.zeros((1, 8, 8, 3), np.float32), "expected to be a uint8 tensor"),
    (np.zeros((8, 8, 3), np.uint8), r"must be uint8 \[B, H, W, 3\].*got shape.*\[8 8 3\]"),
    (np.zeros((1, 8, 8, 4), np.uint8), r"got shape.*\[1 8 8 4\]"),
    (np.zeros((1, 0, 8, 3), np.uint8), r"with B, H, W > 0; got shape.*\[1 0 8 3\]"),
    (np.zeros((0, 8, 8, 3), np.uint8), r"with B, H, W > 0; got shape.*\[0 8 8 3\]"),
])
def test_bad_image_requests_fail_with_a_clear_error(exported, images_, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported["default"](images=tf.constant(images_))
    assert exported["default"](images=tf.constant(synthetic_batch(1)))["num_detections"].shape == [1]  # still serving


@pytest.mark.parametrize("payload, index", [
    ([b"not an image"], 0),
    ([b"", b"x"], "0 1"),
    ("GOOD_THEN_TRUNCATED_JPEG", 1),
])
def test_bad_bytes_requests_name_the_batch_index(exported, payload, index):
    if payload == "GOOD_THEN_TRUNCATED_JPEG":
        buffer = io.BytesIO()
        Image.fromarray(synthetic_batch(1, seed=4)[0]).save(buffer, "JPEG")
        payload = [png(synthetic_batch(1, seed=5)[0]), buffer.getvalue()[:300]]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"not one at batch index:\] \[{index}\]"):
        exported["bytes"](image_bytes=tf.constant(payload))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        exported["bytes"](image_bytes=tf.constant([], tf.string))


def saved_variables(export_dir):
    return [name for name, _ in tf.train.list_variables(os.path.join(export_dir, "variables", "variables"))
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def test_optimized_export_freezes_weights_and_unoptimized_keeps_variables(exported, tmp_path):
    assert saved_variables(exported["dir"]) == []  # optimize (default): weights are graph constants
    cfg = exported["cfg"]
    plain_cfg = config.Config(**{**vars(cfg), "export": config.ExportConfig(
        max_detections=cfg.export.max_detections, optimize=False)})
    saved_model.export_saved_model(exported["model"], exported["anchors"], plain_cfg, str(tmp_path), EXPORT_CLASS_NAMES)
    plain = tf.saved_model.load(str(tmp_path))
    assert len(saved_variables(str(tmp_path))) == len(exported["model"].weights)
    batch = tf.constant(synthetic_batch(2, seed=33))
    got = numpy_outputs(exported["default"](images=batch))
    want = numpy_outputs(plain.signatures["serving_default"](images=batch))
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=5e-5)
