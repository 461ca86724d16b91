"""prototxt text and Caffe's layer geometry (caffe_attacks.caffe_geometry).

Pure tier: sizes worked out by hand from Caffe's rules (each case says why).
Caffe tier: the same rules against pycaffe's own Reshape over a grid of
windows and sizes, edge cases included.
"""
import itertools

import pytest

from caffe_attacks.caffe_geometry import (
    Window, conv_output_hw, conv_output_size, conv_window, crop_offsets, crop_output_shape,
    deconv_output_size, interp_output_size, layer_type, parse_param_str, parse_prototxt,
    pool_output_hw, pool_output_size, pool_window, read_net_definition, upsample_output_size)
from caffe_attacks.zoo import shapes
from tests.conftest import requires_caffe


def _param(text):
    """A parsed ``x { ... }`` message body."""
    return parse_prototxt("x { %s }" % text)["x"][0]


# ---------------------------------------------------------------- prototxt text

def test_parser_reads_strings_comments_and_nested_messages():
    net = parse_prototxt(
        'name: "n"  # a comment\ninput: \'data\' input_dim: 1 input_dim: 3\n'
        'layer { name: "p" type: "Python" python_param { module: "m" layer: "L" '
        'param_str: "{\\"a\\": 1}" } param { lr_mult: 2.5 } bias_term: false pool: MAX }\n'
        'layer < name: "q"; top: "a", top: "b" >')
    layer = net["layer"][0]
    assert net["name"] == ["n"] and net["input"] == ["data"] and net["input_dim"] == [1, 3]
    assert layer["python_param"][0]["param_str"] == ['{"a": 1}']
    assert layer["param"][0]["lr_mult"] == [2.5]
    assert layer["bias_term"] == [False] and layer["pool"] == ["MAX"]
    assert layer_type(layer) == "Python:m.L"
    assert net["layer"][1]["top"] == ["a", "b"]


@pytest.mark.parametrize("text", ['layer { name: "a"', 'layer { name: }', 'name:', '"x"'],
                         ids=["unterminated", "no-value", "trailing-name", "bare-string"])
def test_parser_rejects_malformed_text(text):
    with pytest.raises(ValueError):
        parse_prototxt(text)


def test_read_net_definition_names_the_definition(tmp_path):
    path = tmp_path / "broken.prototxt"
    path.write_text('layer { name: "a"')
    with pytest.raises(ValueError, match="broken.prototxt"):
        read_net_definition(str(path))
    assert read_net_definition('name: "n"') == {"name": ["n"]}


def test_param_str_keeps_only_present_keys_and_checks_types():
    assert parse_param_str("  ", {"eps": float}, "X") == {}
    assert parse_param_str('{"eps": 1}', {"eps": float, "n": int}, "X") == {"eps": 1.0}
    with pytest.raises(ValueError, match="unknown key"):
        parse_param_str('{"epss": 1}', {"eps": float}, "X")


# ---------------------------------------------------------------- pooling

@pytest.mark.parametrize("size, kernel, stride, pad, expected", [
    (500, 2, 2, 0, 250),
    (101, 2, 2, 0, 51),     # ceil: a 51st window starts at 100 and holds one pixel
    (161, 3, 2, 1, 81),     # ceil(160 / 2) + 1; the last starts at 159, inside
    (5, 2, 2, 1, 3),        # ceil(5 / 2) + 1 = 4, but the 4th would start at 5 = i + p: dropped
    (6, 2, 2, 1, 4),        # ceil(6 / 2) + 1 = 4; the 4th starts at 5 < 7: kept
    (5, 1, 3, 0, 3),        # no pad: a window starting at 6, past the input, is kept
    (60, 60, 60, 0, 1),     # PSPNet bin 1
    (60, 20, 20, 0, 3),     # PSPNet bin 3
], ids=lambda v: str(v))
def test_pool_output_size_hand_worked(size, kernel, stride, pad, expected):
    assert pool_output_size(size, kernel, stride, pad) == expected


def test_pool_drops_a_padding_window_on_an_unpadded_axis_when_the_other_pads():
    # PoolingLayer::Reshape tests "if (pad_h_ || pad_w_)", then each axis.
    # H (3, kernel 2, stride 3, no pad): ceil(1 / 3) + 1 = 2 windows, the 2nd
    # starting at 3 >= 3 + 0, so dropped; W (pad 1): ceil(3 / 3) + 1 = 2, the
    # 2nd starting at 3 < 3 + 1, kept.  With no pad at all both keep 2.
    window = pool_window(_param("kernel_size: 2 stride: 3 pad_h: 0 pad_w: 1"))
    assert window == Window((2, 2), (3, 3), (0, 1))
    assert pool_output_hw((3, 3), window) == (1, 2)
    assert pool_output_hw((3, 3), Window((2, 2), (3, 3), (0, 0))) == (2, 2)


def test_pool_window_fields():
    assert pool_window(_param("kernel_h: 3 kernel_w: 5 stride_h: 1 stride_w: 2")) == \
        Window((3, 5), (1, 2), (0, 0))
    assert pool_window(_param("global_pooling: true"), (7, 9)) == Window((7, 9), (1, 1), (0, 0))
    assert pool_output_hw((7, 9), pool_window(_param("global_pooling: true"), (7, 9))) == (1, 1)


@pytest.mark.parametrize("text", [
    "stride: 2", "kernel_size: 3 kernel_h: 3 kernel_w: 3", "kernel_h: 3",
    "kernel_size: 2 pad: 2", "kernel_size: 3 pad_h: 1", "kernel_size: 2 stride: 0",
    "global_pooling: true kernel_size: 2",
], ids=["no-kernel", "both-forms", "h-only", "pad>=kernel", "pad_h-only", "stride0",
        "global+kernel"])
def test_pool_window_refuses_what_caffe_refuses(text):
    with pytest.raises(ValueError):
        pool_window(_param(text), (8, 8))


# ---------------------------------------------------------------- convolution

@pytest.mark.parametrize("size, kernel, stride, pad, dilation, expected", [
    (224, 3, 1, 1, 1, 224),     # same padding
    (227, 11, 4, 0, 1, 55),     # (227 - 11) / 4 + 1
    (10, 3, 2, 0, 1, 4),        # floor(7 / 2) + 1
    (65, 3, 1, 12, 12, 65),     # DeepLab ASPP rate 12: extent 25, pad 12
    (500, 3, 1, 100, 1, 698),   # FCN conv1_1 pad 100
    (2, 3, 2, 0, 1, 1),         # C++ truncates (2 - 3) / 2 to 0: one output
    (2, 3, 1, 0, 1, 0),         # (2 - 3) / 1 + 1 = 0
], ids=lambda v: str(v))
def test_conv_output_size_hand_worked(size, kernel, stride, pad, dilation, expected):
    assert conv_output_size(size, kernel, stride, pad, dilation) == expected


@pytest.mark.parametrize("size, kernel, stride, pad, expected", [
    (7, 16, 8, 4, 56),          # 8 * 6 + 16 - 8
    (16, 4, 2, 0, 34),          # FCN upscore2: 2 * 15 + 4
    (1, 64, 32, 0, 64),
], ids=lambda v: str(v))
def test_deconv_output_size_hand_worked(size, kernel, stride, pad, expected):
    assert deconv_output_size(size, kernel, stride, pad) == expected


def test_conv_window_fields():
    assert conv_window(_param("kernel_size: 3")) == Window((3, 3), (1, 1), (0, 0), (1, 1))
    assert conv_window(_param("kernel_size: 3 kernel_size: 5 stride: 2 pad: 1 pad: 2 "
                              "dilation: 2 dilation: 4")) == \
        Window((3, 5), (2, 2), (1, 2), (2, 4))
    # Convolution (unlike Pooling) takes pad_h alone: pad_w stays 0
    assert conv_window(_param("kernel_h: 1 kernel_w: 7 pad_h: 3")) == \
        Window((1, 7), (1, 1), (3, 0), (1, 1))
    window = conv_window(_param("kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 dilation: 2"))
    assert conv_output_hw((11, 11), window) == (4, 11)
    assert conv_output_hw((4, 11), window, transposed=True) == (11, 11)


@pytest.mark.parametrize("text", [
    "num_output: 1", "kernel_size: 1 kernel_size: 2 kernel_size: 3",
    "kernel_size: 3 stride_h: 2", "kernel_size: 3 kernel_h: 3 kernel_w: 3", "kernel_size: 3 dilation: 0",
], ids=["no-kernel", "three-kernels", "stride_h-only", "both-forms", "dilation0"])
def test_conv_window_refuses_what_caffe_refuses(text):
    with pytest.raises(ValueError):
        conv_window(_param(text))


# ---------------------------------------------------------------- crop

def test_crop_fcn_score_and_axes():
    # FCN-8s: score (1, 21, 70, 70) cropped to data's 64 x 64 at offset 3 (axis 2 default)
    assert crop_output_shape((1, 21, 70, 70), (1, 3, 64, 64), _param("offset: 3")) == (1, 21, 64, 64)
    assert crop_offsets(_param(""), 4) == (2, (0, 0))
    assert crop_offsets(_param("axis: -2 offset: 5"), 4) == (2, (5, 5))
    assert crop_offsets(_param("axis: 1 offset: 1 offset: 2 offset: 3"), 4) == (1, (1, 2, 3))
    assert crop_output_shape((2, 5, 9, 9), (2, 3, 4, 4),
                             _param("axis: 1 offset: 1 offset: 2 offset: 3")) == (2, 3, 4, 4)


@pytest.mark.parametrize("shape, like, text", [
    ((1, 21, 70, 70), (1, 3, 64, 64), "offset: 7"),             # 7 + 64 > 70
    ((1, 21, 70, 70), (1, 3, 64, 64), "offset: 1 offset: 2 offset: 3"),   # 3 offsets, 2 axes
    ((1, 21, 70, 70), (1, 3, 64, 64), "axis: 4"),
], ids=["overflow", "offset-count", "axis"])
def test_crop_refuses_what_caffe_refuses(shape, like, text):
    with pytest.raises(ValueError):
        crop_output_shape(shape, like, _param(text))


# ---------------------------------------------------------------- forks' Interp, Upsample

@pytest.mark.parametrize("params, hw, expected", [
    (dict(zoom_factor=8), (65, 65), (513, 513)),              # 65 + 64 * 7
    (dict(shrink_factor=2), (513, 1025), (257, 513)),         # 512 // 2 + 1
    (dict(zoom_factor=3, shrink_factor=4), (513, 513), (385, 385)),   # 129, then 129 + 128 * 2
    (dict(height=60, width=90), (1, 1), (60, 90)),
    (dict(zoom_factor=2, pad_beg=-1, pad_end=-1), (12, 12), (19, 19)),   # 10 + 9
], ids=lambda v: str(v).replace(" ", ""))
def test_interp_output_size_hand_worked(params, hw, expected):
    assert interp_output_size(*hw, params)[2:] == expected


def test_upsample_fixed_size_wins_over_scale():
    assert upsample_output_size(23, 30, {"scale": 2, "upsample_h": 45, "upsample_w": 60}) == (45, 60)
    assert upsample_output_size(23, 30, {"scale": 2, "pad_out_h": True}) == (45, 60)


# ---------------------------------------------------------------- shape inference uses it

def test_infer_names_the_layer_that_fails():
    net = parse_prototxt(
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 2 input_dim: 2\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        'convolution_param { num_output: 4 kernel_size: 3 } }')
    with pytest.raises(ValueError, match="layer 'c': empty output 0x0"):
        shapes.infer(net)


# ---------------------------------------------------------------- against pycaffe

POOL_CASES = [((h, w), (k, k), (s, s), (ph, pw))
              for (h, w), k, s, (ph, pw) in itertools.product(
                  [(3, 3), (5, 5), (6, 7), (9, 4)], [1, 2, 3], [1, 2, 3], [(0, 0), (1, 1), (0, 1)])
              if ph < k and pw < k]
CONV_CASES = [((h, w), k, s, p, d)
              for (h, w), k, s, p, d in itertools.product(
                  [(5, 5), (6, 7), (2, 9)], [1, 3], [1, 2, 3], [0, 1], [1, 2])]


def _caffe_top_shapes(tmp_path, layers, input_hw):
    import caffe
    path = tmp_path / "net.prototxt"
    path.write_text('input: "data" input_shape { dim: 1 dim: 2 dim: %d dim: %d }\n%s'
                    % (input_hw[0], input_hw[1], "\n".join(layers)))
    net = caffe.Net(str(path), caffe.TEST)
    return {name: tuple(blob.data.shape) for name, blob in net.blobs.items()}


@requires_caffe
def test_pool_sizes_equal_pycaffe(tmp_path):
    by_input = {}
    for case in POOL_CASES:
        by_input.setdefault(case[0], []).append(case)
    checked = 0
    for hw, cases in by_input.items():
        layers = ['layer { name: "p%d" type: "Pooling" bottom: "data" top: "p%d" pooling_param {'
                  ' pool: MAX kernel_size: %d stride: %d pad_h: %d pad_w: %d } }'
                  % (i, i, k[0], s[0], p[0], p[1]) for i, (_, k, s, p) in enumerate(cases)]
        got = _caffe_top_shapes(tmp_path, layers, hw)
        for i, (_, k, s, p) in enumerate(cases):
            assert got["p%d" % i][2:] == pool_output_hw(hw, Window(k, s, p)), (hw, k, s, p)
            checked += 1
    assert checked == len(POOL_CASES) > 50


@requires_caffe
def test_conv_and_deconv_sizes_equal_pycaffe(tmp_path):
    by_input = {}
    for case in CONV_CASES:
        by_input.setdefault(case[0], []).append(case)
    for hw, cases in by_input.items():
        layers = []
        expected = {}
        for i, (_, k, s, p, d) in enumerate(cases):
            out = tuple(conv_output_size(n, k, s, p, d) for n in hw)
            up = tuple(deconv_output_size(n, k, s, p, d) for n in hw)
            if min(out + up) < 1:
                continue        # an empty top
            for kind in ("Convolution", "Deconvolution"):
                name = "%s%d" % (kind[0], i)
                layers.append('layer { name: "%s" type: "%s" bottom: "data" top: "%s" '
                              'convolution_param { num_output: 1 kernel_size: %d stride: %d '
                              'pad: %d dilation: %d } }' % (name, kind, name, k, s, p, d))
            expected["C%d" % i] = out
            expected["D%d" % i] = up
        got = _caffe_top_shapes(tmp_path, layers, hw)
        for name, hw_out in expected.items():
            assert got[name][2:] == hw_out, (name, hw)
