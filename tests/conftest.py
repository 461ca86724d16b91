"""Shared fixtures and skip conditions for the three test tiers."""
import importlib.util

import pytest

HAVE_CAFFE = importlib.util.find_spec("caffe") is not None
requires_caffe = pytest.mark.skipif(not HAVE_CAFFE, reason="pycaffe not built (run `make setup`)")
