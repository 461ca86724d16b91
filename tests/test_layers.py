"""Numpy tier for the Python layers: forward against closed forms and
independent references, backward as the exact adjoint of forward."""
import numpy as np
import pytest

from caffe_attacks.caffe_geometry import interp_output_size, parse_param_str, upsample_output_size
from caffe_attacks.layers.bn import (psp_bn_backward, psp_bn_forward, scale_shift_backward,
                                     scale_shift_forward)
from caffe_attacks.layers.interp import axis_weights, interp_backward, interp_forward
from caffe_attacks.layers.upsample import unpool_backward, unpool_forward
from tests.gradcheck import assert_gradient_close, numeric_gradient

RNG = np.random.default_rng(8)


# ---------------------------------------------------------------- param_str

def test_param_str_empty_means_no_keys():
    assert parse_param_str("", {"eps": float}, "X") == {}
    assert parse_param_str("  ", {"eps": float}, "X") == {}


def test_param_str_types_and_values():
    got = parse_param_str('{"height": 60, "eps": 1, "pad_out_h": true}',
                          {"height": int, "eps": float, "pad_out_h": bool}, "X")
    assert got == {"height": 60, "eps": 1.0, "pad_out_h": True}
    assert isinstance(got["eps"], float)


@pytest.mark.parametrize("text, match", [
    ('{"heigth": 60}', "unknown key"),
    ('{"height": 60.5}', "integer"),
    ('{"height": true}', "integer"),
    ('{"height": "60"}', "integer"),
    ("[60]", "JSON object"),
    ("{'height': 60}", "not valid JSON"),
], ids=["typo", "float-for-int", "bool-for-int", "string", "list", "python-dict"])
def test_param_str_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_param_str(text, {"height": int}, "Interp")


# ---------------------------------------------------------------- Interp

def interp_reference(x, out_h, out_w):
    """Per-pixel align_corners=True bilinear in float64, written from the definition:
    output pixel (i, j) samples the input at (i (H-1)/(out_h-1), j (W-1)/(out_w-1))."""
    h, w = x.shape[-2:]
    y = np.zeros(x.shape[:-2] + (out_h, out_w))
    for i in range(out_h):
        sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
        for j in range(out_w):
            sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
            r0, c0 = min(int(np.floor(sy)), h - 1), min(int(np.floor(sx)), w - 1)
            r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
            fy, fx = sy - r0, sx - c0
            y[..., i, j] = ((1 - fy) * ((1 - fx) * x[..., r0, c0] + fx * x[..., r0, c1])
                            + fy * ((1 - fx) * x[..., r1, c0] + fx * x[..., r1, c1]))
    return y


def test_interp_hand_worked_2x2_to_3x3():
    x = np.array([[[[0.0, 2.0], [4.0, 8.0]]]], np.float32)
    want = [[0.0, 1.0, 2.0], [2.0, 3.5, 5.0], [4.0, 6.0, 8.0]]
    np.testing.assert_array_equal(interp_forward(x, 3, 3)[0, 0], want)


@pytest.mark.parametrize("in_hw, out_hw", [
    ((4, 5), (7, 13)), ((9, 9), (5, 3)), ((1, 1), (6, 4)), ((3, 6), (1, 1)),
    ((6, 6), (6, 11)), ((2, 7), (33, 65)), ((13, 8), (13, 8)),
], ids=lambda v: "x".join(map(str, v)))
def test_interp_matches_per_pixel_reference(in_hw, out_hw):
    x = RNG.standard_normal((2, 3) + in_hw).astype(np.float32)
    y = interp_forward(x, *out_hw)
    assert y.shape == (2, 3) + out_hw and y.dtype == np.float32
    np.testing.assert_allclose(y, interp_reference(x.astype(np.float64), *out_hw), rtol=0, atol=2e-6)


def test_interp_identity_when_sizes_match():
    x = RNG.standard_normal((1, 4, 7, 9)).astype(np.float32)
    y = interp_forward(x, 7, 9)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)


def test_interp_crop_then_resize():
    x = RNG.standard_normal((1, 2, 10, 12)).astype(np.float32)
    y = interp_forward(x, 5, 9, pad_beg=-2, pad_end=-1)
    np.testing.assert_allclose(y, interp_reference(x[..., 2:9, 2:11].astype(np.float64), 5, 9),
                               atol=2e-6)
    np.testing.assert_array_equal(interp_forward(x, 7, 9, pad_beg=-2, pad_end=-1), x[..., 2:9, 2:11])


def test_interp_one_pixel_broadcasts():
    x = np.array([[[[3.25]], [[-1.5]]]], np.float32)
    y = interp_forward(x, 60, 60)
    assert np.all(y[0, 0] == 3.25) and np.all(y[0, 1] == -1.5)


def test_axis_weights_zoom8_are_exact_eighths():
    # zoom 8 (PSPNet's 60 -> 473): ratio 59/472 = 1/8 exactly in float32
    i0, i1, w0, w1 = axis_weights(60, 473)
    np.testing.assert_array_equal(i0, np.minimum(np.arange(473) // 8, 59))
    np.testing.assert_array_equal(w1, (np.arange(473) % 8) / 8.0)
    assert i1[-1] == 59 and w0[-1] == 1.0
    np.testing.assert_array_equal(w0 + w1, 1.0)


@pytest.mark.parametrize("in_hw, params, want", [
    ((1025, 2049), {"shrink_factor": 2}, (513, 1025)),          # ICNet data_sub2
    ((60, 60), {"zoom_factor": 8}, (473, 473)),                  # PSPNet VOC conv6_interp
    ((90, 90), {"zoom_factor": 8}, (713, 713)),                  # PSPNet Cityscapes
    ((1, 1), {"height": 60, "width": 60}, (60, 60)),             # PSP bin-1 branch
    ((513, 513), {"zoom_factor": 3, "shrink_factor": 4}, (385, 385)),  # DeepLab MSC 0.75 input
    ((49, 49), {"zoom_factor": 4, "shrink_factor": 3}, (65, 65)),      # DeepLab MSC 0.75 scores
    ((65, 65), {"zoom_factor": 8}, (513, 513)),                  # DeepLab final
    ((10, 12), {"shrink_factor": 1, "pad_beg": -1, "pad_end": -2}, (7, 9)),
    ((10, 12), {"shrink_factor": 3, "height": 4, "width": 4}, (4, 4)),  # shrink has precedence
], ids=lambda v: str(v).replace(" ", ""))
def test_interp_output_size_rules(in_hw, params, want):
    assert interp_output_size(*in_hw, params)[2:] == want


@pytest.mark.parametrize("params", [
    {}, {"height": 5}, {"zoom_factor": 0}, {"shrink_factor": 2, "pad_beg": 1}, {"height": 0, "width": 3},
], ids=["none", "height-only", "zoom0", "positive-pad", "height0"])
def test_interp_bad_params(params):
    with pytest.raises(ValueError):
        interp_output_size(10, 10, params)


@pytest.mark.parametrize("in_hw, out_hw, pads", [
    ((5, 6), (9, 14), (0, 0)), ((9, 9), (4, 3), (0, 0)), ((1, 1), (5, 5), (0, 0)),
    ((8, 10), (13, 4), (-1, -2)), ((7, 7), (7, 7), (-1, 0)), ((33, 65), (65, 129), (0, 0)),
])
def test_interp_backward_is_the_adjoint(in_hw, out_hw, pads):
    """<f(x), g> = <x, f^T(g)> for the linear map f, in float64, so f^T is the gradient."""
    x = RNG.standard_normal((2, 3) + in_hw)
    g = RNG.standard_normal((2, 3) + out_hw)
    fx = interp_forward(x, *out_hw, *pads)
    ftg = interp_backward(g, *in_hw, *pads)
    assert ftg.shape == x.shape
    np.testing.assert_allclose(np.vdot(fx, g), np.vdot(x, ftg), rtol=1e-10)
    # and column by column against the dense matrix probed from forward
    dense = np.stack([interp_forward(e.reshape((1, 1) + in_hw), *out_hw, *pads).reshape(-1)
                      for e in np.eye(in_hw[0] * in_hw[1])], axis=1)
    np.testing.assert_allclose(ftg[0, 0].reshape(-1), dense.T @ g[0, 0].reshape(-1), atol=1e-10)


# ---------------------------------------------------------------- BN

def _bn_blobs(c):
    return (RNG.uniform(0.5, 2.0, (1, c, 1, 1)).astype(np.float32),
            RNG.standard_normal((1, c, 1, 1)).astype(np.float32),
            RNG.standard_normal((1, c, 1, 1)).astype(np.float32),
            RNG.uniform(0.0, 3.0, (1, c, 1, 1)).astype(np.float32))


def test_psp_bn_matches_formula_per_element():
    slope, bias, mean, var = _bn_blobs(3)
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = psp_bn_forward(x, slope, bias, mean, var)
    assert y.dtype == np.float32
    for n in range(2):
        for c in range(3):
            s, b, m, v = (float(p.reshape(-1)[c]) for p in (slope, bias, mean, var))
            want = s * (x[n, c].astype(np.float64) - m) / np.sqrt(v + 1e-5) + b
            np.testing.assert_allclose(y[n, c], want, rtol=1e-5, atol=1e-5)


def test_psp_bn_eps_matters_at_zero_variance():
    x = np.full((1, 1, 2, 2), 3.0, np.float32)
    ones, zeros = np.ones(1, np.float32), np.zeros(1, np.float32)
    np.testing.assert_allclose(psp_bn_forward(x, ones, zeros, zeros, zeros), 3.0 / np.sqrt(1e-5), rtol=1e-6)
    np.testing.assert_allclose(psp_bn_forward(x, ones, zeros, zeros, zeros, eps=1e-3), 3.0 / np.sqrt(1e-3),
                               rtol=1e-6)


def test_psp_bn_equals_folded_scale_shift():
    slope, bias, mean, var = (p.astype(np.float64) for p in _bn_blobs(4))
    scale = slope / np.sqrt(var + 1e-5)
    x = RNG.standard_normal((1, 4, 3, 3))
    np.testing.assert_allclose(psp_bn_forward(x, slope, bias, mean, var),
                               scale_shift_forward(x, scale, bias - scale * mean), rtol=1e-12, atol=1e-12)


def test_scale_shift_matches_formula():
    scale, shift = RNG.standard_normal(5), RNG.standard_normal(5)
    x = RNG.standard_normal((2, 5, 3, 2))
    np.testing.assert_allclose(scale_shift_forward(x, scale, shift),
                               x * scale[None, :, None, None] + shift[None, :, None, None], rtol=1e-15)


def test_bn_backward_by_finite_differences():
    slope, bias, mean, var = (p.astype(np.float64) for p in _bn_blobs(3))
    x = RNG.standard_normal((1, 3, 2, 3))
    g = RNG.standard_normal(x.shape)
    num = numeric_gradient(lambda z: np.vdot(psp_bn_forward(z, slope, bias, mean, var), g), x, step=1e-4)
    assert_gradient_close(psp_bn_backward(g, slope, var), num, threshold=1e-6)
    num = numeric_gradient(lambda z: np.vdot(scale_shift_forward(z, slope, bias), g), x, step=1e-4)
    assert_gradient_close(scale_shift_backward(g, slope), num, threshold=1e-6)


# ---------------------------------------------------------------- Upsample

def max_pool_2x2_with_mask(x):
    """Independent 2x2 stride-2 MAX pooling (ceil mode, as Caffe) returning the
    Caffe-style mask: flat index row * W + col of each window's first maximum."""
    n, c, h, w = x.shape
    ph, pw = -(-h // 2), -(-w // 2)
    pooled, mask = np.zeros((n, c, ph, pw)), np.zeros((n, c, ph, pw), np.float32)
    for a in range(n):
        for b in range(c):
            for i in range(ph):
                for j in range(pw):
                    best = None
                    for r in range(2 * i, min(2 * i + 2, h)):
                        for s in range(2 * j, min(2 * j + 2, w)):
                            if best is None or x[a, b, r, s] > best[0]:
                                best = (x[a, b, r, s], r * w + s)
                    pooled[a, b, i, j], mask[a, b, i, j] = best
    return pooled.astype(x.dtype), mask


@pytest.mark.parametrize("hw", [(4, 6), (5, 7)], ids=["even", "odd"])
def test_unpool_places_maxima_back(hw):
    x = RNG.standard_normal((2, 3) + hw).astype(np.float32)
    pooled, mask = max_pool_2x2_with_mask(x)
    y = unpool_forward(pooled, mask, *hw)
    # every window's maximum is back where it was, everything else is zero
    window_max = np.zeros_like(x, dtype=bool)
    for i in range(0, hw[0], 2):
        for j in range(0, hw[1], 2):
            win = x[:, :, i:i + 2, j:j + 2]
            window_max[:, :, i:i + 2, j:j + 2] = win == win.max(axis=(2, 3), keepdims=True)
    np.testing.assert_array_equal(y, np.where(window_max, x, 0))


def test_unpool_backward_is_the_adjoint():
    x = RNG.standard_normal((2, 3, 4, 5))
    _, mask = max_pool_2x2_with_mask(RNG.standard_normal((2, 3, 8, 10)))
    g = RNG.standard_normal((2, 3, 8, 10))
    np.testing.assert_allclose(np.vdot(unpool_forward(x, mask, 8, 10), g),
                               np.vdot(x, unpool_backward(g, mask)), rtol=1e-12)
    # gathered from the masked positions
    np.testing.assert_array_equal(unpool_backward(g, mask)[1, 2, 3, 4], g[1, 2].flat[int(mask[1, 2, 3, 4])])


def test_unpool_repeated_target_last_wins():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = np.array([[[[0.0, 5.0], [5.0, 15.0]]]])   # cells (0,1) and (1,0) both name place 5
    y = unpool_forward(x, mask, 4, 4)
    want = np.zeros(16)
    want[[0, 5, 15]] = [1.0, 3.0, 4.0]
    np.testing.assert_array_equal(y.reshape(-1), want)
    g = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(unpool_backward(g, mask), [[[[0.0, 0.0], [5.0, 15.0]]]])
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, unpool_backward(g, mask)))


def test_unpool_rejects_out_of_range_mask():
    with pytest.raises(ValueError, match="out of range"):
        unpool_forward(np.ones((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16.0), 4, 4)


@pytest.mark.parametrize("params, want", [
    ({}, (10, 14)), ({"scale": 2}, (10, 14)), ({"scale": 3}, (15, 21)),
    ({"scale_h": 2, "scale_w": 3}, (10, 21)),
    ({"scale": 2, "pad_out_h": True}, (9, 14)),
    ({"upsample_h": 9, "upsample_w": 13}, (9, 13)),
    ({"scale": 2, "upsample_h": 9, "upsample_w": 13}, (9, 13)),
], ids=lambda v: str(v).replace(" ", ""))
def test_upsample_output_size_rules(params, want):
    assert upsample_output_size(5, 7, params) == want


@pytest.mark.parametrize("params", [
    {"scale": 1}, {"scale": 2, "scale_h": 2, "scale_w": 2}, {"scale_h": 2},
    {"scale": 3, "pad_out_w": True}, {"upsample_h": 1, "upsample_w": 4},
])
def test_upsample_bad_params(params):
    with pytest.raises(ValueError):
        upsample_output_size(5, 7, params)
