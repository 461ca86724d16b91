"""The runner's numerics options: the Cityscapes image dtype and the protocol's target_blob."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from caffe_attacks import run as run_cli
from caffe_attacks import runner
from caffe_attacks.errors import UsageError
from tests.conftest import requires_caffe


@pytest.fixture(scope="module")
def cityscapes_dir(tmp_path_factory):
    from caffe_attacks.datasets import synthetic
    d = tmp_path_factory.mktemp("cs")
    synthetic.write_cityscapes(str(d), 4, seed=4, size=(128, 64), val_fraction=0.25)
    return d


@pytest.mark.parametrize("dtype", ["float64", "float32", "uint8"])
def test_cli_flag_reaches_the_reader_and_the_records(cityscapes_dir, dtype):
    args = run_cli.build_parser().parse_args(
        ["--dataset", "cityscapes", "--data-dir", str(cityscapes_dir),
         "--cityscapes-image-dtype", dtype])
    options = run_cli.options_from_args(args)
    assert options.cityscapes_image_dtype == dtype
    data = runner.open_data(options)
    sample = data.load(data.ids[0])
    assert sample.image.dtype == np.dtype(dtype) and sample.image.shape == (512, 1024, 3)
    fake = SimpleNamespace(name="m", weights_md5=None, protocol=runner.parse_protocol(None),
                           model=None, crf=None, member=None, init=None)
    assert runner.record_base(fake, options)["image_dtype"] == dtype


def test_default_is_the_unrounded_resize_and_other_datasets_carry_no_field():
    assert runner.RunOptions().cityscapes_image_dtype == "float64"
    fake = SimpleNamespace(name="m", weights_md5=None, protocol=runner.parse_protocol(None),
                           model=None, crf=None, member=None, init=None)
    assert "image_dtype" not in runner.record_base(fake, runner.RunOptions(dataset="voc"))
    with pytest.raises(UsageError, match="cityscapes-image-dtype"):
        runner.RunOptions(cityscapes_image_dtype="int16")


@requires_caffe
@pytest.mark.parametrize("engine", ["caffe", "torch"])
@pytest.mark.parametrize("target_blob", ["logits", "probabilities"])
def test_protocol_target_blob_reaches_the_engine(engine, target_blob):
    if engine == "torch":
        pytest.importorskip("torch")
    from caffe_attacks.zoo import prototxt_path
    protocol = json.dumps({"mean_bgr": None, "resize": None, "pad": None,
                           "scores_to_labels": "crop", "target_blob": target_blob})
    options = runner.RunOptions(prototxt=str(prototxt_path("tiny_synthetic")),
                                protocol=protocol, engine=engine, random_init=True)
    rm = runner.resolve_model(options)
    assert rm.model.target_blob == target_blob
    assert rm.protocol.target_blob == target_blob


def test_member_model_passes_the_loss_and_ranking_to_its_net():
    """A NAME@VARIANT net answers loss_gradient and ranking_values with its built net's."""
    class Net:
        def loss_gradient(self, x, labels):
            return ("loss", x.shape, labels.shape)

        def ranking_values(self, scores):
            return ("rank", scores.shape)

    model = runner.MemberModel(member=None, load=None)
    model.nets[(4, 6)] = Net()       # built already: no generation needed
    x = np.zeros((1, 3, 4, 6), np.float32)
    assert model.loss_gradient(x, np.zeros((1, 4, 6), int)) == ("loss", (1, 3, 4, 6), (1, 4, 6))
    assert model.ranking_values(np.zeros((1, 5, 4, 6))) == ("rank", (1, 5, 4, 6))
