"""Caffe Python layers for the non-BVLC layer types of the zoo.

Each layer parses its ``param_str`` as JSON and implements ``forward`` and
``backward``; see docs/DESIGN.md for the class names and JSON keys.
"""
