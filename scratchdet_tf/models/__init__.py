"""Keras 3 functional networks: backbones, extras and SSD heads."""
