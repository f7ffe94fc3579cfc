"""Export: SavedModel, TFLite (conversion, metadata), the inference graph, export info, predicting with an export."""
