"""Export: SavedModel signatures vs Keras + postprocess.detect, TF Serving REST payloads, bad requests,
TFLite modes (ops, dtypes, op attributes) and fp32 TFLite vs SavedModel / a numpy NMS twin."""

import base64
import io
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scratchdet_tf import box_ops, config, config_flags, export, export_tflite, postprocess, tflite_metadata
from scratchdet_tf.data import augment
from scratchdet_tf.models import ssd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
CLASS_NAMES = ("cat", "dog", "bird")


def tiny_config(max_detections=20):
    # bn_momentum 0: one training-mode call sets the BN statistics to those of real activations, so
    # the random network gives well-scaled logits and deltas (a sane stand-in for a trained one).
    return config.Config(
        model=config.ModelConfig(depth=18, width=1 / 16, image_size=SIZE, num_classes=3, bn_momentum=0.0),
        anchors=config.AnchorConfig(steps=()), data=config.DataConfig(class_names=CLASS_NAMES),
        export=config.ExportConfig(max_detections=max_detections))


def images(n, size=SIZE, seed=0):
    return np.stack(list(export_tflite.synthetic_images(n, size, seed=seed)))


def build_tiny(cfg):
    keras.utils.set_random_seed(0)
    model = ssd.build_model(cfg.model, cfg.anchors)
    model(images(8, seed=100).astype(np.float32) - np.float32(cfg.data.mean_rgb), training=True)
    return model, ssd.model_anchors(model, cfg.anchors, SIZE)


def calibration():
    return export_tflite.representative_images(lambda: export_tflite.synthetic_images(8, 80, seed=7), SIZE, 8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = tiny_config()
    model, anchors = build_tiny(cfg)
    export_dir = str(tmp_path_factory.mktemp("export"))
    export.export_saved_model(model, anchors, cfg, export_dir, CLASS_NAMES, step=7)
    export_tflite.export_tflite(model, anchors, cfg, export_dir, export_tflite.MODES, calibration())
    regular_dir = str(tmp_path_factory.mktemp("regular"))
    export_tflite.export_tflite(model, anchors, cfg, regular_dir, ["fp32"], use_regular_nms=True)
    loaded = tf.saved_model.load(export_dir)
    return {"cfg": cfg, "model": model, "anchors": anchors, "dir": export_dir, "regular_dir": regular_dir,
            "loaded": loaded, "default": loaded.signatures["serving_default"],
            "bytes": loaded.signatures["serving_bytes"]}


def reference(exported, batch):
    """Keras model + augment.transform_eval + postprocess.detect, eagerly, per image."""
    cfg, model = exported["cfg"], exported["model"]
    inputs = tf.stack([augment.transform_eval(image, image_size=SIZE, mean_rgb=cfg.data.mean_rgb) for image in batch])
    out = model(inputs, training=False)
    return {k: v.numpy() for k, v in postprocess.detect(
        out["cls_logits"], out["box_deltas"], exported["anchors"], score_threshold=cfg.eval.score_threshold,
        pre_nms_top_k=cfg.eval.pre_nms_top_k, nms_iou_threshold=cfg.eval.nms_iou_threshold,
        max_detections=cfg.export.max_detections).items()}


def png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def numpy_outputs(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


# --- SavedModel ---


def test_export_dir_layout_and_info(exported):
    export_dir = exported["dir"]
    with open(os.path.join(export_dir, "assets", "labels.txt")) as f:
        assert f.read().split() == list(CLASS_NAMES)
    info = export.read_info(export_dir)
    assert info["conv_macs"] == ssd.conv_macs(exported["model"])
    assert info["image_size"] == SIZE and info["class_names"] == list(CLASS_NAMES) and info["step"] == 7
    assert config.from_dict(info["config"]) == exported["cfg"]
    assert set(info["tflite"]) == set(export_tflite.MODES) and info["tflite_nms"] == "fast"
    assert export.class_names_of(export_dir) == CLASS_NAMES
    assert export.class_names_of(os.path.join(export_dir, "model_int8.tflite")) == CLASS_NAMES


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


@pytest.mark.parametrize("shape", [(2, 80, 100), (1, SIZE, SIZE), (1, 37, 300)])
def test_reloaded_saved_model_equals_keras_plus_detect(exported, shape):
    batch = images(shape[0], seed=sum(shape))
    batch = np.stack([np.asarray(Image.fromarray(im).resize(shape[2:0:-1])) for im in batch])  # [B, H, W, 3]
    got = numpy_outputs(exported["default"](images=tf.constant(batch)))
    want = reference(exported, batch)
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    assert want["num_detections"].min() > 0
    # 5e-5: the export folds BN into the convs (inference_graph), which rounds differently.
    np.testing.assert_allclose(got["detection_scores"], want["scores"], atol=5e-5)
    np.testing.assert_allclose(got["detection_boxes"], want["boxes"], atol=5e-5)
    n = int(want["num_detections"][0])
    np.testing.assert_array_equal(got["detection_classes"][0, :n], want["classes"][0, :n] + 1)  # 1-based
    assert (got["detection_classes"][0, n:] == 0).all() and (got["detection_scores"][0, n:] == 0).all()


def test_serving_bytes_png_equals_serving_default(exported):
    image = images(1, size=90, seed=3)[0]
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
    good = png(images(1, seed=2)[0])
    start = time.time()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 50000000 pixels; larger at batch index:\] "
                                                             r"\[1\].*400000000"):
        exported["bytes"](image_bytes=tf.constant([good, buffer.getvalue()]))
    assert time.time() - start < 5


def test_rest_b64_payload_through_serving_bytes(exported):
    first, second = images(1, size=70, seed=11)[0], images(1, size=50, seed=12)[0]
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
    image = images(1, size=40, seed=13)[0]
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
    assert exported["default"](images=tf.constant(images(1)))["num_detections"].shape == [1]  # still serving


@pytest.mark.parametrize("payload, index", [
    ([b"not an image"], 0),
    ([b"", b"x"], "0 1"),
    ("GOOD_THEN_TRUNCATED_JPEG", 1),
])
def test_bad_bytes_requests_name_the_batch_index(exported, payload, index):
    if payload == "GOOD_THEN_TRUNCATED_JPEG":
        buffer = io.BytesIO()
        Image.fromarray(images(1, seed=4)[0]).save(buffer, "JPEG")
        payload = [png(images(1, seed=5)[0]), buffer.getvalue()[:300]]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"not one at batch index:\] \[{index}\]"):
        exported["bytes"](image_bytes=tf.constant(payload))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        exported["bytes"](image_bytes=tf.constant([], tf.string))


def test_predict_fn_matches_signature_and_rejects_bad_input(exported):
    predict = export.load_predict_fn(exported["dir"])
    batch = images(2, seed=21)
    got = predict(batch)
    want = reference(exported, batch)
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-5)
    assert predict(batch[0])["boxes"].shape == (1, 20, 4)
    with pytest.raises(ValueError, match="expected uint8 RGB images"):
        predict(batch.astype(np.float32))


def saved_variables(export_dir):
    return [name for name, _ in tf.train.list_variables(os.path.join(export_dir, "variables", "variables"))
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def test_optimized_export_freezes_weights_and_unoptimized_keeps_variables(exported, tmp_path):
    assert saved_variables(exported["dir"]) == []  # optimize (default): weights are graph constants
    cfg = exported["cfg"]
    plain_cfg = config.Config(**{**vars(cfg), "export": config.ExportConfig(
        max_detections=cfg.export.max_detections, optimize=False)})
    export.export_saved_model(exported["model"], exported["anchors"], plain_cfg, str(tmp_path), CLASS_NAMES)
    plain = tf.saved_model.load(str(tmp_path))
    assert len(saved_variables(str(tmp_path))) == len(exported["model"].weights)
    batch = tf.constant(images(2, seed=33))
    got = numpy_outputs(exported["default"](images=batch))
    want = numpy_outputs(plain.signatures["serving_default"](images=batch))
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=5e-5)


def test_missing_or_bad_model_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export.load_predict_fn(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        export.load_predict_fn(str(tmp_path))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="garbage.tflite"):
        export.load_predict_fn(str(garbage))


# --- TFLite ---


def test_each_tflite_mode_runs_with_builtin_ops_and_the_detection_op(exported):
    builtin = {"ADD", "CAST", "CONCATENATION", "CONV_2D", "DEQUANTIZE", "MAX_POOL_2D", "PAD", "QUANTIZE",
               "RESHAPE", "SOFTMAX", "SUB", "TFLite_Detection_PostProcess"}
    image = images(1, size=100, seed=9)[0]
    for mode in export_tflite.MODES:
        path = os.path.join(exported["dir"], f"model_{mode}.tflite")
        ops = export_tflite.op_names(path)
        assert "TFLite_Detection_PostProcess" in ops and ops <= builtin, (mode, ops - builtin)
        out = export.load_predict_fn(path)(image)
        n = int(out["num_detections"][0])
        assert 0 < n <= 20, mode
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all() and (out["classes"][0, :n] < 3).all()
        assert (np.diff(out["scores"][0, :n]) <= 1e-6).all(), mode  # sorted


def test_tflite_outputs_sit_in_the_detection_op_port_order(exported):
    # Runtimes that go by position (MediaPipe without names, TF OD API clients) read output i as port i
    # of TFLite_Detection_PostProcess: boxes, classes, scores, count. LiteRT's own view is the reference.
    for mode in export_tflite.MODES:
        interpreter = export_tflite.interpreter(os.path.join(exported["dir"], f"model_{mode}.tflite"), xnnpack=False)
        op = next(o for o in interpreter._get_ops_details() if o["op_name"] == "TFLite_Detection_PostProcess")
        physical = [d["index"] for d in interpreter.get_output_details()]
        assert physical == list(op["outputs"]), mode
        shapes = [tuple(d["shape"]) for d in interpreter.get_output_details()]
        assert shapes == [(1, 20, 4), (1, 20), (1, 20), (1,)], (mode, shapes)
        # The signature still maps the OD API names onto the same tensors.
        runner = interpreter.get_signature_runner()
        out = {k: np.array(v) for k, v in runner(images=images(1, seed=3)).items()}
        by_name = [out[k] for k in ("detection_boxes", "detection_classes", "detection_scores", "num_detections")]
        for got, index in zip(by_name, physical):
            np.testing.assert_array_equal(got, interpreter.get_tensor(index))


def test_tflite_metadata_round_trips(exported):
    # Read back with the schema MediaPipe ships, the packed files with zipfile: what a runtime sees.
    import zipfile

    for mode in export_tflite.MODES:
        path = os.path.join(exported["dir"], f"model_{mode}.tflite")
        meta = tflite_metadata.read_metadata(path)
        assert meta["name"] == exported["model"].name and mode in meta["description"]
        assert meta["min_parser_version"] == "1.2.0"
        assert meta["input"] == {"name": "image", "color_space": 1, "normalization": None}  # RGB, uint8: none
        assert meta["outputs"] == ["location", "category", "score", "number of detections"]
        assert meta["output_groups"] == {"detection_result": ["location", "category", "score"]}
        assert meta["box_index"] == [1, 0, 3, 2]  # left, top, right, bottom inside [ymin, xmin, ymax, xmax]
        assert meta["label_files"] == {"category": ["labels.txt"]}
        with zipfile.ZipFile(path) as archive:
            assert archive.read("labels.txt").decode() == "cat\ndog\nbird\n"
        assert meta["labels"] == CLASS_NAMES


def test_tflite_copied_alone_keeps_its_class_names(exported, tmp_path):
    alone = tmp_path / "model.tflite"
    alone.write_bytes(open(os.path.join(exported["dir"], "model_fp32.tflite"), "rb").read())
    assert export.class_names_of(str(alone)) == CLASS_NAMES
    bare = tmp_path / "bare.tflite"  # what the converter alone writes: no metadata, no names
    bare.write_bytes(tflite_metadata._flatbuffer_part(alone.read_bytes()))
    assert export.class_names_of(str(bare)) == ()


def test_metadata_is_replaced_not_stacked_when_written_twice(exported):
    with open(os.path.join(exported["dir"], "model_fp32.tflite"), "rb") as f:
        once = f.read()
    twice = tflite_metadata.add_metadata(once, ("a", "b", "c"), name="again", description="d")
    meta = tflite_metadata.read_metadata(twice)
    assert meta["name"] == "again" and meta["labels"] == ("a", "b", "c")
    fresh = tflite_metadata.add_metadata(tflite_metadata._flatbuffer_part(once), ("a", "b", "c"), name="again",
                                         description="d")
    assert len(twice) == len(fresh)  # the old metadata buffer and labels are gone, not kept beside
    with pytest.raises(ValueError, match="single lines"):
        tflite_metadata.add_metadata(once, ("a", "b\nc", "d"), name="x", description="y")


def test_int8_model_has_int8_weights_uint8_input_and_float_outputs(exported):
    path = os.path.join(exported["dir"], "model_int8.tflite")
    interpreter = export_tflite.interpreter(path, xnnpack=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert convs and all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in convs)  # filters
    assert all(tensors[op["inputs"][0]]["dtype"] == np.int8 for op in convs)  # activations too
    runner = interpreter.get_signature_runner()
    assert runner.get_input_details()["images"]["dtype"] == np.uint8
    assert {k: v["dtype"] for k, v in runner.get_output_details().items()} == {
        "detection_boxes": np.float32, "detection_classes": np.float32, "detection_scores": np.float32,
        "num_detections": np.float32}
    sizes = {m: os.path.getsize(os.path.join(exported["dir"], f"model_{m}.tflite")) for m in export_tflite.MODES}
    params = ssd.num_trainable_params(exported["model"])
    assert sizes["fp32"] > 4 * params  # weights are in the file (not uninitialised variables)
    assert sizes["int8"] < 0.5 * sizes["fp32"] and sizes["dynamic"] < 0.5 * sizes["fp32"]
    assert sizes["fp16"] < 0.75 * sizes["fp32"]


def test_detection_op_attributes(exported):
    options = export_tflite.postprocess_options(os.path.join(exported["dir"], "model_fp32.tflite"))
    assert options["num_classes"] == 3 and options["max_detections"] == 20
    assert options["max_classes_per_detection"] == 1 and not options["use_regular_nms"]
    assert (options["y_scale"], options["x_scale"], options["h_scale"], options["w_scale"]) == (10, 10, 5, 5)
    assert options["nms_iou_threshold"] == pytest.approx(0.45) and options["nms_score_threshold"] == pytest.approx(0.01)
    regular = export_tflite.postprocess_options(os.path.join(exported["regular_dir"], "model_fp32.tflite"))
    assert regular["use_regular_nms"]


def test_fp32_tflite_regular_nms_top_detections_equal_saved_model(exported):
    predict = export.load_predict_fn(os.path.join(exported["regular_dir"], "model_fp32.tflite"), num_threads=1)
    for seed in (1, 2):
        image = images(1, seed=seed)  # at S x S: no resize difference
        got, want = predict(image), export.load_predict_fn(exported["dir"])(image)
        k = 10
        np.testing.assert_array_equal(got["classes"][0, :k], want["classes"][0, :k])
        np.testing.assert_allclose(got["scores"][0, :k], want["scores"][0, :k], atol=1e-4)
        np.testing.assert_allclose(got["boxes"][0, :k], want["boxes"][0, :k], atol=1e-4)


def test_regular_nms_predict_fn_avoids_the_litert_thread_bug(exported):
    # LiteRT's multi-threaded regular NMS skips class index T with T threads (tensorflow#56058);
    # tflite_predict_fn runs such a model single-threaded, so 2 threads give the 1-thread result.
    path = os.path.join(exported["regular_dir"], "model_fp32.tflite")
    image = images(1, seed=1)
    one, two = export.load_predict_fn(path, num_threads=1)(image), export.load_predict_fn(path, num_threads=2)(image)
    np.testing.assert_array_equal(one["classes"], two["classes"])
    assert 2 in one["classes"][0, :int(one["num_detections"][0])]


def class_agnostic_nms_twin(model, anchors, image, cfg):
    """numpy twin of the op's fast NMS: best class per anchor, threshold, greedy NMS (IoU > t suppresses)."""
    out = model(image[None].astype(np.float32) - np.float32(cfg.data.mean_rgb), training=False)
    logits = out["cls_logits"].numpy()[0].astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True))[:, 1:]
    boxes = box_ops.decode(out["box_deltas"][0], anchors).numpy()
    labels, scores = probs.argmax(-1), probs.max(-1)
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > cfg.eval.score_threshold]
    keep = []
    for i in order:
        if len(keep) == cfg.export.max_detections:
            break
        if all(box_ops.iou(boxes[i:i + 1], boxes[j:j + 1]).numpy()[0, 0] <= cfg.eval.nms_iou_threshold
               for j in keep):
            keep.append(i)
    return np.clip(boxes[keep], 0, 1), labels[keep], scores[keep]


def test_fp32_tflite_fast_nms_equals_class_agnostic_nms_twin(exported):
    image = images(1, seed=31)[0]
    got = export.load_predict_fn(os.path.join(exported["dir"], "model_fp32.tflite"))(image)
    boxes, labels, scores = class_agnostic_nms_twin(exported["model"], exported["anchors"], image, exported["cfg"])
    n = int(got["num_detections"][0])
    assert n == len(labels)
    np.testing.assert_array_equal(got["classes"][0, :n], labels)
    np.testing.assert_allclose(got["scores"][0, :n], scores, atol=1e-4)
    np.testing.assert_allclose(got["boxes"][0, :n], boxes, atol=1e-4)
    # The best detection is the SavedModel's too (per-class NMS only adds boxes after it).
    saved = export.load_predict_fn(exported["dir"])(image[None])
    assert saved["classes"][0, 0] == labels[0] and saved["scores"][0, 0] == pytest.approx(scores[0], abs=1e-4)


def test_int8_top_detection_close_to_fp32(exported):
    fp32 = export.load_predict_fn(os.path.join(exported["dir"], "model_fp32.tflite"))
    int8 = export.load_predict_fn(os.path.join(exported["dir"], "model_int8.tflite"))
    for seed in (41, 42, 43):
        image = images(1, seed=seed)[0]
        a, b = fp32(image), int8(image)
        assert abs(a["scores"][0, 0] - b["scores"][0, 0]) < 0.1
        # Some int8 detection among the top 5 overlaps fp32's best box with its class.
        ious = box_ops.iou(a["boxes"][0, :1], b["boxes"][0, :5]).numpy()[0]
        assert ((ious > 0.5) & (b["classes"][0, :5] == a["classes"][0, 0])).any()


def test_int8_without_calibration_images_is_an_error(exported, tmp_path):
    with pytest.raises(ValueError, match="representative images"):
        export_tflite.export_tflite(exported["model"], exported["anchors"], exported["cfg"], str(tmp_path), ["int8"])


def test_representative_images_resize_and_stop(tmp_path):
    for i in range(3):
        Image.fromarray(images(1, size=40 + i, seed=i)[0]).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    generate = export_tflite.representative_images(lambda: export_tflite.folder_images(str(tmp_path)), SIZE, 2)
    batches = list(generate())
    assert len(batches) == 2 and all(b.shape == (1, SIZE, SIZE, 3) and b.dtype == np.uint8 for b in batches)
    empty = export_tflite.representative_images(lambda: iter(()), SIZE, 2)
    with pytest.raises(ValueError, match="no calibration images"):
        list(empty())


# --- tools/export.py ---


def test_export_tool_reads_the_run_and_applies_flag_overrides(tmp_path):
    cfg = tiny_config()
    model, _ = build_tiny(cfg)
    model_dir, export_dir = tmp_path / "run", tmp_path / "export" / "1"
    config_flags.write_run_files(cfg, str(model_dir))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), 1).save(checkpoint_number=12)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "export.py"), f"--model_dir={model_dir}",
         f"--export_dir={export_dir}", "--tflite=fp32", "--export.max_detections=5"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 12
    assert summary["tflite_bytes"]["fp32"] == os.path.getsize(export_dir / "model_fp32.tflite")
    out = export.load_predict_fn(str(export_dir))(images(1))
    assert out["boxes"].shape == (1, 5, 4)  # the override reached the export
    missing = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"),
                              f"--model_dir={tmp_path / 'nope'}", f"--export_dir={export_dir}"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "nope" in missing.stderr


# --- tools/benchmark.py infer ---


def test_benchmark_infer_mode_reports_speed_from_the_export_info(exported):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "infer",
         f"--model={os.path.join(exported['dir'], 'model_int8.tflite')}", "--iterations=3"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "infer" and summary["model"].endswith("model_int8.tflite") and summary["batch"] == 1
    # latency_ms is printed rounded to 0.01 ms, and a tiny model runs in a fraction of a millisecond.
    latency = summary["latency_ms"]
    assert latency > 0
    assert 0.99e3 / (latency + 0.005) <= summary["images_per_sec"] <= 1.01e3 / max(latency - 0.005, 1e-6)
    macs = ssd.conv_macs(exported["model"])
    assert summary["gflops_per_sec"] == pytest.approx(2 * macs * summary["images_per_sec"] / 1e9, abs=0.1)


def test_a_crashing_tflite_conversion_costs_only_its_own_file(exported, tmp_path, monkeypatch):
    # The int8 quantizer has been seen to segfault on early checkpoints; the export must survive it.
    crash_int8 = ("import os, runpy, signal, sys\n"
                  "if sys.argv[2] == 'int8':\n"
                  "    print('error: scale out of expressed type range', file=sys.stderr, flush=True)\n"
                  "    os.kill(os.getpid(), signal.SIGSEGV)\n"
                  "runpy.run_module('scratchdet_tf.tflite_convert', run_name='__main__')\n")
    monkeypatch.setattr(export_tflite, "CONVERT_COMMAND", (sys.executable, "-c", crash_int8))
    out = str(tmp_path / "export")
    written = export_tflite.export_tflite(exported["model"], exported["anchors"], exported["cfg"], out,
                                          ["fp32", "int8"], calibration())
    assert set(written) == {"fp32"} and os.path.isfile(os.path.join(out, "model_fp32.tflite"))
    assert not os.path.exists(os.path.join(out, "model_int8.tflite"))
    failed = export.read_info(out)["tflite_failed"]
    assert set(failed) == {"int8"}
    assert "TFLite int8 conversion crashed (SIGSEGV in the TFLite converter; last message: error: scale out of " \
           "expressed type range)" in failed["int8"]
    with pytest.raises(ValueError, match="unknown TFLite mode"):
        export_tflite.export_tflite(exported["model"], exported["anchors"], exported["cfg"], out, ["int4"])
