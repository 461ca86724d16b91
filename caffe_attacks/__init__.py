"""Caffe-faithful adversarial attacks on semantic segmentation models."""

__version__ = "0.1.0"
