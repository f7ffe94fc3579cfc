"""Running a ``.tflite``: a LiteRT interpreter, and what a model file contains (ops, post-processing attributes)."""

from __future__ import annotations

import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.lite.tools import flatbuffer_utils


def interpreter(model, num_threads: int = 2, *, xnnpack: bool = True):
    """A LiteRT interpreter (``ai_edge_litert``; ``tf.lite.Interpreter`` if that is not installed), allocated.

    Args:
      model: path of a ``.tflite`` file, or its bytes.
      num_threads: CPU threads.
      xnnpack: apply the default XNNPACK delegate (which fuses the ops it runs into DELEGATE nodes).
    """
    try:
        from ai_edge_litert import interpreter as litert

        make, resolvers = litert.Interpreter, litert.OpResolverType
    except ImportError:
        make, resolvers = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    kwargs = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": model}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    runner = make(num_threads=num_threads, **kwargs)
    runner.allocate_tensors()
    return runner


def op_names(model) -> set:
    """Names of the ops in a TFLite model (path or bytes); custom ops by their custom name."""
    return {op["op_name"] for op in interpreter(model, 1, xnnpack=False)._get_ops_details()}


def postprocess_options(model) -> dict:
    """The attributes of the ``TFLite_Detection_PostProcess`` op in a model (path or bytes); {} if it has none."""
    if isinstance(model, (bytes, bytearray)):
        parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    else:
        parsed = flatbuffer_utils.read_model(model)
    for subgraph in parsed.subgraphs:
        for op in subgraph.operators:
            code = parsed.operatorCodes[op.opcodeIndex].customCode
            if code and code.decode() == "TFLite_Detection_PostProcess":
                return flexbuffers.Loads(bytes(op.customOptions))
    return {}
