"""Evaluation: VOC and COCO metrics, devkit result files, the evaluation runner, reports, multi-scale testing."""
