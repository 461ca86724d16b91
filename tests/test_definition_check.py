"""Bad definitions and incomplete weights: errors naming file and layers, never an abort."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_attacks import definition_check as D
from caffe_attacks.caffemodel_reader import WeightShapeError, read_caffemodel
from tests.conftest import requires_caffe

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "prototxt" / "tiny_synthetic.prototxt"
TINY_CRF = REPO / "prototxt" / "tiny_synthetic+crf.prototxt"
TINY_WEIGHTS = REPO / "caffe_attacks" / "data" / "tiny_synthetic.caffemodel"
TYPES = ("Input", "Convolution", "ReLU", "Pooling", "Python")

GOOD = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "train_only" type: "Convolution" bottom: "label" top: "t" include { phase: TRAIN }
        convolution_param { num_output: 2 kernel_size: 3 } }
"""


def _net(text):
    return D.parse(text, "net.prototxt")


def test_a_good_definition_passes():
    D.check_definition(_net(GOOD), TYPES, "net.prototxt")       # the TRAIN layer is not checked


@pytest.mark.parametrize("edit, message", [
    (lambda t: "", "net.prototxt defines no layers"),
    (lambda t: "# only a comment\n", "defines no layers"),
    (lambda t: t.replace('type: "ReLU"', 'type: "ReLu"'),
     r"layer 'relu' has type 'ReLu', which Caffe does not know \(did you mean ReLU"),
    (lambda t: t.replace('bottom: "conv" top: "conv"', 'bottom: "cnv" top: "conv"'),
     "layer 'relu' reads blob 'cnv', which no earlier layer produces"),
    (lambda t: t + 'layer { name: "again" type: "ReLU" bottom: "data" top: "conv" }',
     "layer 'again' writes blob 'conv', which an earlier layer already produces"),
    (lambda t: t + 'layer { name: "p" type: "Python" bottom: "conv" top: "p" '
                   'python_param { module: "caffe_attacks.layers.interp" layer: "Nope" } }',
     "Python layer 'p': module 'caffe_attacks.layers.interp' has no class 'Nope'"),
    (lambda t: t + 'layer { name: "p" type: "Python" bottom: "conv" top: "p" '
                   'python_param { module: "no_such_module_xyz" layer: "L" } }',
     "Python layer 'p': cannot import its module 'no_such_module_xyz'"),
    (lambda t: t + 'layer { name: "typeless" bottom: "conv" top: "x" }',
     "layer 'typeless' has no type"),
], ids=["empty", "comment-only", "unknown-type", "unknown-bottom", "top-twice",
        "python-class", "python-module", "no-type"])
def test_a_bad_definition_is_named(edit, message):
    with pytest.raises(D.DefinitionError, match=message):
        D.check_definition(_net(edit(GOOD)), TYPES, "net.prototxt", "Caffe")


def test_an_unparsable_definition_is_a_definition_error():
    with pytest.raises(D.DefinitionError, match="cannot parse net definition x.prototxt"):
        D.parse("layer { name: ", "x.prototxt")


# --- what fills the parameters ---------------------------------------------------------

SHARED = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "a"
        param { name: "w" } param { name: "b" } convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "conv_copy" type: "Convolution" bottom: "data" top: "b"
        param { name: "w" } param { name: "b" } convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "half_shared" type: "Convolution" bottom: "data" top: "c"
        param { name: "w" } convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "a" top: "bn"
        param { name: "m" } param { name: "v" } param { name: "s" } }
layer { name: "bn_copy" type: "BatchNorm" bottom: "b" top: "bn_copy"
        param { name: "m" } param { name: "v" } param { name: "s" } }
layer { name: "crf" type: "Python" bottom: "a" bottom: "a" bottom: "data" top: "crf"
        python_param { module: "caffe_attacks.layers.meanfield" layer: "MultiStageMeanfield" } }
"""
BLOBS = {"conv": 2, "conv_copy": 2, "half_shared": 2, "bn": 3, "bn_copy": 3, "crf": 3}


@pytest.mark.parametrize("loaded, unfilled", [
    ({"conv", "bn"}, ["half_shared"]),                   # copies filled by sharing; crf by param_str
    ({"conv_copy", "bn"}, ["half_shared"]),              # any holder of a shared blob fills it
    ({"conv"}, ["half_shared", "bn", "bn_copy"]),
    ({"conv", "bn_copy"}, ["half_shared", "bn"]),        # BatchNorm: only the first holder counts
    (set(), ["conv", "conv_copy", "half_shared", "bn", "bn_copy"]),
    ({"conv", "half_shared", "bn"}, []),
])
def test_unfilled_layers_follow_the_definitions_sharing(loaded, unfilled):
    assert D.unfilled_layers(_net(SHARED), BLOBS, loaded) == unfilled


def test_require_filled_names_the_layers_and_the_files():
    with pytest.raises(D.UnfilledParamsError, match=r"w\.caffemodel leaves 1 of its parameter "
                                                    r"layers unfilled: half_shared .*for n\.pt"):
        D.require_filled(_net(SHARED), BLOBS, {"conv", "bn"}, "w.caffemodel", "n.pt")
    with pytest.raises(D.UnfilledParamsError, match="fills none of its 5 parameter layers"):
        D.require_filled(_net(SHARED), BLOBS, set(), "w.caffemodel", "n.pt")


def test_a_caffemodel_is_checked_against_a_definition_without_an_engine():
    model = read_caffemodel(TINY_WEIGHTS)
    for prototxt in (TINY, TINY_CRF):
        D.check_caffemodel_fills(D.parse(prototxt.read_text()), model, "w", str(prototxt))
    enet = REPO / "prototxt" / "enet_cityscapes.prototxt"
    with pytest.raises(D.UnfilledParamsError, match="fills none"):
        D.check_caffemodel_fills(D.parse(enet.read_text()), model, "w", "enet")
    narrower = TINY.read_text().replace("num_output: 16", "num_output: 8", 1)
    with pytest.raises(WeightShapeError, match="layer 'conv1_1' blob 0"):
        D.check_caffemodel_fills(D.parse(narrower), model, "w", "narrower")


# --- the engines ------------------------------------------------------------------------

def _engines():
    engines = []
    try:
        import caffe  # noqa: F401
        from caffe_attacks.caffe_net import CaffeNet
        engines.append(pytest.param(CaffeNet, id="caffe"))
    except ImportError:
        pass
    try:
        from caffe_attacks.torch_net import TorchNet
        engines.append(pytest.param(TorchNet, id="torch"))
    except ImportError:
        pass
    return engines


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("make, message", [
    (lambda t: "", "defines no layers"),
    (lambda t: t.replace('type: "Convolution"', 'type: "NoSuchLayer"', 1),
     "layer 'conv1_1' has type 'NoSuchLayer'"),
    (lambda t: t.replace('bottom: "data"', 'bottom: "nodata"', 1),
     "layer 'conv1_1' reads blob 'nodata'"),
], ids=["empty", "unknown-type", "unknown-bottom"])
def test_engines_refuse_a_bad_definition_before_building_it(engine, make, message, tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(make(TINY.read_text()))
    with pytest.raises(D.DefinitionError, match="%s.*%s" % (path, message)):
        engine(str(path))


@pytest.mark.parametrize("engine", _engines())
def test_engines_refuse_weights_that_leave_layers_unfilled(engine, tmp_path):
    empty = tmp_path / "z.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(D.UnfilledParamsError, match="z.caffemodel fills none of its 10"):
        engine(str(TINY), str(empty))
    # another net's caffemodel: the tiny net with its convolutions renamed
    other = TINY.read_text().replace('name: "conv', 'name: "other_conv')
    with pytest.raises(D.UnfilledParamsError, match="leaves 6 of its parameter layers "
                                                    "unfilled: other_conv1_1, other_conv1_2"):
        engine(other, str(TINY_WEIGHTS))
    net = engine(str(TINY_CRF), str(TINY_WEIGHTS))              # crf: filled by its param_str
    assert net.load_report.only_in_net == ["crf"]


@pytest.mark.parametrize("engine", _engines())
def test_engines_refuse_a_directory_as_weights(engine, tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        engine(str(TINY), str(tmp_path))


@requires_caffe
def test_a_multiscale_net_is_filled_by_sharing_until_a_copy_loses_its_names(tmp_path):
    from google.protobuf import text_format
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.zoo import multiscale as M
    ms = M.multiscale_net("tiny_synthetic", (20, 28))
    text = text_format.MessageToString(ms.net)
    model = CaffeNet(text, str(TINY_WEIGHTS), input_blob="data", score_blob=ms.score_blob)
    assert "conv1_1_res05" in model.load_report.only_in_net
    unshared = ms.net.__class__.FromString(ms.net.SerializeToString())
    for layer in unshared.layer:
        if layer.name == "conv1_1_res05":
            del layer.param[:]
    with pytest.raises(D.UnfilledParamsError, match="unfilled: conv1_1_res05 "):
        CaffeNet(text_format.MessageToString(unshared), str(TINY_WEIGHTS), input_blob="data",
                 score_blob=ms.score_blob)


@requires_caffe
def test_gpu_request_on_a_cpu_only_build_is_an_error_not_an_abort():
    from caffe_attacks import caffe_build
    if caffe_build.gpu_problem(0) is None:
        pytest.skip("this Caffe build can use GPU 0")
    from caffe_attacks.caffe_net import CaffeNet
    with pytest.raises(caffe_build.GpuUnavailable, match="cannot use GPU 0.*CPU-only"):
        CaffeNet(str(TINY), str(TINY_WEIGHTS), gpu=0)
    with pytest.raises(caffe_build.GpuUnavailable, match=">= 0"):
        CaffeNet(str(TINY), str(TINY_WEIGHTS), gpu=-1)


_NAN_PROBE = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from caffe_attacks.caffe_net import CaffeNet
from caffe_attacks.finite import NonFiniteError
net = CaffeNet(sys.argv[2], sys.argv[3])
x = np.zeros((1, 3, 96, 128), np.float32)
if sys.argv[4] == "input":
    x[0, 1, 5, 7] = np.nan
else:   # NaN weights: every activation after conv1_1 is NaN, max pooling's mask stays -1
    net.net.params["conv1_1"][0].data[...] = np.nan
try:
    scores = net.forward(x)
    net.input_gradient(x, np.ones_like(scores))
except NonFiniteError as e:
    print("NonFiniteError:", e)
    sys.exit(3)
"""


@requires_caffe
@pytest.mark.parametrize("where", ["input", "weights"])
def test_nan_never_reaches_caffes_backward(tmp_path, where):
    """In a child process: before the fix this corrupted the heap (exit 134)."""
    script = tmp_path / "probe.py"
    script.write_text(_NAN_PROBE)
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(TINY), str(TINY_WEIGHTS),
                           where], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert ("the net's %s holds" % ("input" if where == "input" else "scores")) in proc.stdout


@pytest.mark.parametrize("engine", _engines())
def test_finite_inputs_still_run(engine):
    net = engine(str(TINY), str(TINY_WEIGHTS))
    x = np.random.default_rng(0).normal(0, 30, (1, 3, 96, 128)).astype(np.float32)
    scores = net.forward(x)
    assert np.isfinite(net.input_gradient(x, np.ones_like(scores))).all()


def test_torch_device_requests_are_checked_against_the_build():
    torch = pytest.importorskip("torch")
    from caffe_attacks.torch_net import TorchNet
    with pytest.raises(ValueError, match="bad --device 'gpu0'"):
        TorchNet(str(TINY), str(TINY_WEIGHTS), device="gpu0")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="only %d CUDA device" % torch.cuda.device_count()):
            TorchNet(str(TINY), str(TINY_WEIGHTS), device="cuda:%d" % torch.cuda.device_count())
    else:
        with pytest.raises(ValueError, match="no CUDA device"):
            TorchNet(str(TINY), str(TINY_WEIGHTS), device="cuda")
