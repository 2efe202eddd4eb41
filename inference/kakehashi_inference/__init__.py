"""Kakehashi inference server: the /v1/predict API over a baked-in TensorFlow model."""

__version__ = "0.1.0"
