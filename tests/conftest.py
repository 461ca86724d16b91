"""Shared fixtures and skip conditions for the three test tiers."""
import importlib.util

import pytest

HAVE_CAFFE = importlib.util.find_spec("caffe") is not None
requires_caffe = pytest.mark.skipif(not HAVE_CAFFE, reason="pycaffe not built (run `make setup`)")


def _shared_dir():
    """The read-only reference data beside the checkout (../shared), if any."""
    from pathlib import Path
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    return here.parent / "shared"


SHARED = _shared_dir()
REFERENCE_PROTOTXT = SHARED / "reference" / "prototxt"   # original deploys (data)
SUPPLEMENTARY = SHARED / "seed" / "supplementary.txt"     # the paper's tables


@pytest.fixture(scope="session")
def small_synthetic_voc(tmp_path_factory):
    """A 16-scene synthetic VOC-layout set of 48x32 images (seed 5), written once."""
    from caffe_attacks.datasets import synthetic
    d = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.main(["--format", "voc", "--out", str(d), "--n", "16", "--seed", "5",
                    "--width", "48", "--height", "32"])
    return d


def tiny_weights_path():
    """The embedded tiny_synthetic caffemodel's path (str), or None when it is not there."""
    from pathlib import Path

    from caffe_attacks import weights as W
    try:
        path = Path(W.weights_file(W.model_entry("tiny_synthetic"), "weights"))
    except KeyError:
        return None
    return str(path) if path.is_file() else None


# the embedded default model: the demo-scale tests need its trained caffemodel
requires_tiny_weights = pytest.mark.skipif(
    tiny_weights_path() is None,
    reason="the embedded tiny_synthetic caffemodel is not there (make train-tiny)")
