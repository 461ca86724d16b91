"""Caffe Python layers for the non-BVLC layer types of the zoo.

Each layer parses its ``param_str`` as JSON and implements ``forward`` and
``backward``; see docs/DESIGN.md for the class names and JSON keys.
The math lives in plain numpy functions beside each class (e.g.
``interp.interp_forward``), importable and tested without pycaffe; the
classes then derive from ``object`` instead of ``caffe.Layer``.
"""
