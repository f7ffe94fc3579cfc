"""TFLite Model Metadata for the exported detectors: what MediaPipe Tasks' ObjectDetector and LiteRT read.

A ``.tflite`` written by ``export_tflite`` is made self-describing here (docs/EXPORT.md, "TFLite
metadata"):

- The four outputs are put in the physical order of the ``TFLite_Detection_PostProcess`` op's ports:
  location (boxes), category (classes), score, number of detections. The converter orders a TF2
  signature's outputs as it likes; runtimes that go by position then read the wrong tensors.
- A ``TFLITE_METADATA`` buffer in the standard metadata schema (the flatbuffers module MediaPipe
  ships, ``mediapipe.tasks.metadata.metadata_schema_py_generated``): model name, description,
  version and author; the image input (RGB; uint8 [0, 255] needs no normalization, a float input
  gets its ``NormalizationOptions``); the outputs named ``location`` / ``category`` / ``score`` /
  ``number of detections`` (the names MediaPipe looks up), the boxes as ratio-coordinate
  boundaries in ``[ymin, xmin, ymax, xmax]`` order, the first three in the ``detection_result``
  tensor group.
- The label file ``labels.txt`` (one class name a line, class index order: category value ``k``
  is line ``k``) attached to the category tensor as ``TENSOR_VALUE_LABELS`` and packed into the
  file the standard way: a zip archive appended to the flatbuffer.

Writing needs the schema module (the ``mediapipe`` package, the ``tflite`` extra); reading the
packed labels back needs only ``zipfile`` (``packed_labels``).
"""

from __future__ import annotations

import io
import zipfile
from typing import Dict, List, Sequence

import flatbuffers
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry MediaPipe / LiteRT look for
METADATA_IDENTIFIER = b"M001"  # file identifier of the metadata flatbuffer
MIN_PARSER_VERSION = "1.2.0"  # tensor groups (added in schema 1.2.0) are the newest field written
LABELS_FILE = "labels.txt"
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# The op's output ports, in order, with the metadata name and description of each.
OUTPUTS = (
    ("location", "The locations of the detected boxes: [ymin, xmin, ymax, xmax] as ratios of the input."),
    ("category", "The categories of the detected boxes: 0-based indices into the packed labels.txt."),
    ("score", "The scores of the detected boxes."),
    ("number of detections", "The number of the detected boxes."),
)
DETECTION_GROUP = "detection_result"


def _schema():
    """The metadata schema module MediaPipe ships (flatbuffers object API)."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated
    except ImportError as err:  # pragma: no cover - exercised only without the tflite extra
        raise ImportError("writing TFLite metadata needs the 'mediapipe' package (pip install -e .[tflite])") from err
    return metadata_schema_py_generated


def _model_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def _flatbuffer_part(model: bytes) -> bytes:
    """The model without an appended zip of associated files."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            first = min((info.header_offset for info in archive.infolist()), default=len(model))
    except zipfile.BadZipFile:
        return model
    return model[:first]


def _postprocess_outputs(model: tflite_schema.ModelT) -> List[int]:
    """Tensor indices of the detection op's four outputs (port order) in subgraph 0."""
    subgraph = model.subgraphs[0]
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex].customCode
        if code and code.decode() == POSTPROCESS_OP:
            return [int(i) for i in op.outputs]
    raise ValueError(f"the model has no {POSTPROCESS_OP} op: not a detector written by export_tflite")


def order_outputs(model: tflite_schema.ModelT) -> None:
    """Puts subgraph 0's outputs (and its signature's output list) in the detection op's port order."""
    ports = _postprocess_outputs(model)
    subgraph = model.subgraphs[0]
    if sorted(int(i) for i in subgraph.outputs) != sorted(ports):
        raise ValueError(f"model outputs {list(subgraph.outputs)} are not the {POSTPROCESS_OP} outputs {ports}")
    subgraph.outputs = list(ports)
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == 0 and signature.outputs:
            signature.outputs.sort(key=lambda t: ports.index(t.tensorIndex))


def _image_input_metadata(fb, tensor: tflite_schema.TensorT):
    meta = fb.TensorMetadataT()
    meta.name = "image"
    content = fb.ContentT()
    content.contentPropertiesType = fb.ContentProperties.ImageProperties
    content.contentProperties = fb.ImagePropertiesT()
    content.contentProperties.colorSpace = fb.ColorSpaceType.RGB
    meta.content = content
    stats = fb.StatsT()
    if tensor.type == tflite_schema.TensorType.UINT8:
        meta.description = "RGB image, uint8 [0, 255], warp-resized to the input size; the mean is subtracted inside."
    else:  # a float input takes raw pixel values: mean 0, std 1 (the model subtracts its own mean)
        meta.description = "RGB image, float pixel values [0, 255], warp-resized to the input size."
        normalization = fb.ProcessUnitT()
        normalization.optionsType = fb.ProcessUnitOptions.NormalizationOptions
        normalization.options = fb.NormalizationOptionsT()
        normalization.options.mean = [0.0, 0.0, 0.0]
        normalization.options.std = [1.0, 1.0, 1.0]
        meta.processUnits = [normalization]
    stats.min, stats.max = [0.0], [255.0]
    meta.stats = stats
    return meta


def _output_metadata(fb, name: str, description: str):
    meta = fb.TensorMetadataT()
    meta.name, meta.description = name, description
    content = fb.ContentT()
    if name == "location":
        content.contentPropertiesType = fb.ContentProperties.BoundingBoxProperties
        box = fb.BoundingBoxPropertiesT()
        box.index = [1, 0, 3, 2]  # where left, top, right, bottom sit in [ymin, xmin, ymax, xmax]
        box.type = fb.BoundingBoxType.BOUNDARIES
        box.coordinateType = fb.CoordinateType.RATIO
        content.contentProperties = box
    else:
        content.contentPropertiesType = fb.ContentProperties.FeatureProperties
        content.contentProperties = fb.FeaturePropertiesT()
    if name != "number of detections":  # [1, N, ...]: the detections run along dimension 1
        value_range = fb.ValueRangeT()
        value_range.min = value_range.max = 2
        content.range = value_range
    meta.content = content
    meta.stats = fb.StatsT()
    if name == "category":
        labels = fb.AssociatedFileT()
        labels.name = LABELS_FILE
        labels.description = "Labels for the categories the model detects (line k = category k)."
        labels.type = fb.AssociatedFileType.TENSOR_VALUE_LABELS
        meta.associatedFiles = [labels]
    return meta


def metadata_buffer(model: tflite_schema.ModelT, *, name: str, description: str, version: str,
                    author: str = "scratchdet-tf", license_text: str = "Apache-2.0") -> bytes:
    """The ``ModelMetadata`` flatbuffer for a model whose outputs are already in port order."""
    fb = _schema()
    subgraph = model.subgraphs[0]
    if len(subgraph.inputs) != 1:
        raise ValueError(f"expected one image input, the model has {len(subgraph.inputs)}")
    image = subgraph.tensors[subgraph.inputs[0]]
    sub = fb.SubGraphMetadataT()
    sub.name = "detection"
    sub.inputTensorMetadata = [_image_input_metadata(fb, image)]
    sub.outputTensorMetadata = [_output_metadata(fb, n, d) for n, d in OUTPUTS]
    group = fb.TensorGroupT()
    group.name = DETECTION_GROUP
    group.tensorNames = [n for n, _ in OUTPUTS[:3]]
    sub.outputTensorGroups = [group]
    meta = fb.ModelMetadataT()
    meta.name, meta.description, meta.version = name, description, version
    meta.author, meta.license = author, license_text
    meta.minParserVersion = MIN_PARSER_VERSION
    meta.subgraphMetadata = [sub]
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def add_metadata(flatbuffer: bytes, class_names: Sequence[str], *, name: str, description: str,
                 version: str = "") -> bytes:
    """The model with ordered outputs, a ``TFLITE_METADATA`` entry and ``labels.txt`` packed in.

    Args:
      flatbuffer: a converted detector (one ``TFLite_Detection_PostProcess`` op); any metadata
        entry or packed archive it already has is replaced.
      class_names: C names, category index order.
      name, description, version: the model's general metadata.

    Raises:
      ValueError: if the model is not such a detector, or a class name is empty or has a newline.
    """
    if any(not n or "\n" in n for n in class_names):
        raise ValueError(f"class names must be non-empty single lines: {list(class_names)}")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(_flatbuffer_part(bytes(flatbuffer))))
    order_outputs(model)
    buffer = tflite_schema.BufferT()
    buffer.data = list(metadata_buffer(model, name=name, description=description, version=version))
    model.metadata = model.metadata or []
    existing = [m for m in model.metadata if m.name.decode() == METADATA_NAME]
    if existing:  # replace the buffer in place: no orphan buffer, no second entry
        model.buffers[existing[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = tflite_schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    out = io.BytesIO()
    out.write(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(class_names) + "\n")
    return out.getvalue()


def packed_files(model) -> Dict[str, bytes]:
    """The associated files packed into a model (path or bytes); {} if none."""
    data = _model_bytes(model)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}
    except zipfile.BadZipFile:
        return {}


def packed_labels(model) -> tuple:
    """Class names packed into a model (``labels.txt``), category index order; () if none."""
    text = packed_files(model).get(LABELS_FILE)
    if text is None:
        return ()
    return tuple(line for line in text.decode("utf-8").split("\n") if line.strip())


def _metadata_bytes(data: bytes) -> bytes | None:
    model = tflite_schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read_metadata(model) -> dict:
    """The model's metadata as plain values (needs the schema module); {} if it has none.

    Returns:
      ``{"name", "description", "version", "min_parser_version", "input": {"name", "color_space",
      "normalization": {"mean", "std"} | None}, "outputs": [names], "output_groups": {name: [names]},
      "box_index", "label_files": {output name: [file names]}, "labels": (...)}``.
    """
    fb = _schema()
    data = _model_bytes(model)
    raw = _metadata_bytes(_flatbuffer_part(data))
    if raw is None:
        return {}
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(raw, 0))
    sub = meta.subgraphMetadata[0]
    image = sub.inputTensorMetadata[0]
    normalization = None
    for unit in image.processUnits or []:
        if unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions:
            normalization = {"mean": list(unit.options.mean), "std": list(unit.options.std)}

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    outputs = [text(t.name) for t in sub.outputTensorMetadata]
    box_index = None
    for t in sub.outputTensorMetadata:
        if t.content and t.content.contentPropertiesType == fb.ContentProperties.BoundingBoxProperties:
            box_index = [int(i) for i in t.content.contentProperties.index]
    return {
        "name": text(meta.name), "description": text(meta.description), "version": text(meta.version),
        "min_parser_version": text(meta.minParserVersion),
        "input": {"name": text(image.name), "color_space": image.content.contentProperties.colorSpace,
                  "normalization": normalization},
        "outputs": outputs,
        "output_groups": {text(g.name): [text(n) for n in g.tensorNames] for g in sub.outputTensorGroups or []},
        "box_index": box_index,
        "label_files": {text(t.name): [text(f.name) for f in t.associatedFiles or []]
                        for t in sub.outputTensorMetadata if t.associatedFiles},
        "labels": packed_labels(data),
    }
