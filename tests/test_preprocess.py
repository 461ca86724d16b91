"""Input protocols: forward placement, exact inverses, padding values, transfer mapping."""
import json
import os

import cv2
import numpy as np
import pytest

from caffe_attacks.preprocess import Protocol, resize_chw

VOC_MEAN = [104.00698793, 116.66876762, 122.67891434]
DILATION_VOC_MEAN = [102.93, 111.36, 116.52]
DILATION_CS_MEAN = [72.39, 82.91, 73.16]
PSP_MEAN = [103.939, 116.779, 123.68]

# The paper's protocols (the authors' and the model repositories' evaluation
# scripts, as docs/FIDELITY.md records them), keyed by model.
PROTOCOLS = {
    "fcn8s_voc": {"mean_bgr": VOC_MEAN, "resize": None,
                  "pad": {"mode": "constant", "canvas": [513, 513]}, "scores_to_labels": "crop"},
    "deeplab_65": {"mean_bgr": VOC_MEAN, "resize": None,
                   "pad": {"mode": "constant", "canvas": [513, 513]},
                   "scores_to_labels": "resize"},
    "crfrnn": {"mean_bgr": PSP_MEAN, "resize": {"long_side": 500, "shrink_only": True},
               "pad": {"mode": "constant", "canvas": [500, 500]}, "scores_to_labels": "crop"},
    "dilated_voc": {"mean_bgr": DILATION_VOC_MEAN, "resize": None,
                    "pad": {"mode": "reflect101", "margin": 186, "canvas": [900, 900]},
                    "scores_to_labels": "resize"},
    "dilated_cs": {"mean_bgr": DILATION_CS_MEAN, "resize": None,
                   "pad": {"mode": "reflect101", "margin": 186}, "scores_to_labels": "crop"},
    "segnet": {"mean_bgr": None, "resize": {"size": [224, 224]}, "pad": None,
               "scores_to_labels": "crop"},
    "enet": {"mean_bgr": None, "resize": {"size": [1024, 512]}, "pad": None,
             "scores_to_labels": "crop"},
    "pspnet_voc": {"mean_bgr": PSP_MEAN, "resize": {"long_side": 473},
                   "pad": {"mode": "constant", "canvas": [473, 473]}, "scores_to_labels": "crop"},
}

# (protocol, image (H, W), score grid (h, w) or None = the output region). The
# image sizes make resize protocols upsample by whole factors, where a nearest
# label upsampling followed by a bilinear score downsampling is exact.
IDENTITY_CASES = [
    ("fcn8s_voc", (375, 500), None),
    ("fcn8s_voc", (61, 47), None),
    ("deeplab_65", (375, 500), (65, 65)),
    ("crfrnn", (333, 500), None),
    ("dilated_voc", (375, 500), (66, 66)),
    ("dilated_voc", (100, 37), (66, 66)),
    ("dilated_cs", (64, 128), None),
    ("segnet", (56, 112), None),
    ("enet", (128, 256), None),
    ("pspnet_voc", (22, 43), None),
]


def _image(hw, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=hw + (3,), dtype=np.uint8)


def _onehot(label, num_classes):
    """(C, h, w) float32 one-hot; void cells (>= C) are all zero."""
    return (np.arange(num_classes)[:, None, None] == label[None]).astype(np.float32)


def _score_hw(protocol, ctx, score_hw):
    return ctx.output_hw if score_hw is None else score_hw


@pytest.mark.parametrize("name,image_hw,score_hw", IDENTITY_CASES,
                         ids=[f"{c[0]}-{c[1][1]}x{c[1][0]}" for c in IDENTITY_CASES])
def test_label_grid_round_trip_is_identity(name, image_hw, score_hw):
    protocol = Protocol.from_dict(PROTOCOLS[name])
    _, ctx = protocol.prepare(_image(image_hw))
    grid_hw = _score_hw(protocol, ctx, score_hw)
    rng = np.random.default_rng(1)
    num_classes = 5
    if score_hw is None:
        # scores on the output region: any label survives label -> scores -> label
        label = rng.integers(0, num_classes, size=image_hw).astype(np.uint8)
        scores = _onehot(protocol.label_to_score_grid(label, ctx), num_classes)
        back = protocol.scores_to_label_grid(scores[None], ctx).argmax(0)
        np.testing.assert_array_equal(back, label)
    else:
        # coarse scores: a score-grid label survives scores -> image -> scores on
        # the cells inside the image, and the image labels it induces are fixed points
        coarse = rng.integers(0, num_classes, size=grid_hw).astype(np.uint8)
        label = protocol.scores_to_label_grid(_onehot(coarse, num_classes), ctx).argmax(0)
        assert label.shape == image_hw
        again = protocol.label_to_score_grid(label.astype(np.uint8), ctx, grid_hw)
        inside = again != 255
        assert inside.sum() >= 0.9 * (image_hw[0] * image_hw[1]) / (
            ctx.output_hw[0] * ctx.output_hw[1]) * grid_hw[0] * grid_hw[1]
        np.testing.assert_array_equal(again[inside], coarse[inside])
        # cells beyond the image still weigh on its last pixels: keep them as they were
        again = np.where(inside, again, coarse)
        back = protocol.scores_to_label_grid(_onehot(again, num_classes), ctx).argmax(0)
        np.testing.assert_array_equal(back, label)


def test_label_to_score_grid_marks_the_canvas_beyond_the_image_void():
    protocol = Protocol.from_dict(PROTOCOLS["fcn8s_voc"])
    _, ctx = protocol.prepare(_image((61, 47)))
    label = np.random.default_rng(2).integers(0, 21, size=(61, 47)).astype(np.uint8)
    grid = protocol.label_to_score_grid(label, ctx)
    assert grid.shape == (513, 513) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:61, :47], label)
    assert (grid[61:] == 255).all() and (grid[:, 47:] == 255).all()
    with pytest.raises(ValueError, match="does not match the image"):
        protocol.label_to_score_grid(label.T, ctx)
    with pytest.raises(ValueError, match="'crop'"):
        protocol.label_to_score_grid(label, ctx, (65, 65))


@pytest.mark.parametrize("name", ["fcn8s_voc", "deeplab_65", "crfrnn", "pspnet_voc"])
def test_constant_pad_is_the_mean_colour(name):
    protocol = Protocol.from_dict(PROTOCOLS[name])
    image = _image((120, 90))
    x, ctx = protocol.prepare(image)
    rh, rw = ctx.resized_hw
    assert x.shape == (1, 3) + tuple(PROTOCOLS[name]["pad"]["canvas"])
    assert x.dtype == np.float32
    pad_mask = np.ones(ctx.canvas_hw, bool)
    pad_mask[:rh, :rw] = False
    assert pad_mask.any()
    assert np.all(x[0][:, pad_mask] == 0)  # 0 after mean subtraction ...
    # ... which is the mean colour once the mean is added back
    mean = np.asarray(PROTOCOLS[name]["mean_bgr"], np.float32)
    np.testing.assert_allclose((x[0] + mean[:, None, None])[:, pad_mask],
                               np.broadcast_to(mean[:, None], (3, pad_mask.sum())), atol=1e-4)
    if (rh, rw) == (120, 90):
        expected = image.astype(np.float32).transpose(2, 0, 1) - mean[:, None, None]
        np.testing.assert_allclose(x[0, :, :rh, :rw], expected, atol=1e-4)


@pytest.mark.parametrize("name,image_hw", [("dilated_voc", (75, 100)), ("dilated_cs", (40, 60)),
                                           ("dilated_voc", (375, 500))])
def test_reflect101_margins_match_numpy_reflect(name, image_hw):
    """np.pad(mode="reflect") excludes the edge pixel: that is BORDER_REFLECT_101."""
    protocol = Protocol.from_dict(PROTOCOLS[name])
    image = _image(image_hw, seed=3)
    x, ctx = protocol.prepare(image)
    f = image.astype(np.float32) - np.asarray(PROTOCOLS[name]["mean_bgr"], np.float32)
    m = 186
    padded = np.pad(f, ((m, m), (m, m), (0, 0)), mode="reflect")
    canvas = PROTOCOLS[name]["pad"].get("canvas")
    if canvas:
        padded = np.pad(padded, ((0, canvas[0] - padded.shape[0]),
                                 (0, canvas[1] - padded.shape[1]), (0, 0)), mode="reflect")
    assert ctx.margin == m
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), padded, atol=1e-4)
    # cross-check against the library the authors used
    ref = cv2.copyMakeBorder(f, m, m, m, m, cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(x[0, :, :ref.shape[0], :ref.shape[1]].transpose(1, 2, 0), ref,
                               atol=1e-4)


def test_placements_of_the_paper_protocols():
    def place(name, hw):
        p = Protocol.from_dict(PROTOCOLS[name])
        return p.placement(hw)
    # PSPNet: long side to 473; 375 * 473 / 500 = 354.75 -> 355, then pad to 473x473
    ctx = place("pspnet_voc", (375, 500))
    assert (ctx.resized_hw, ctx.canvas_hw) == ((355, 473), (473, 473))
    # CRF-RNN shrinks only: a 375x500 image stays, a 600x800 one becomes 375x500
    assert place("crfrnn", (375, 500)).resized_hw == (375, 500)
    assert place("crfrnn", (600, 800)).resized_hw == (375, 500)
    # authors' Cityscapes DilatedNet demo: 1024x512 image -> 1396x884 input, 1024x512 output
    ctx = place("dilated_cs", (512, 1024))
    assert ctx.canvas_hw == (884, 1396) and ctx.output_hw == (512, 1024)
    # VOC dilation8: 900x900 input, output region 528x528 (66x66 scores at stride 8)
    ctx = place("dilated_voc", (375, 500))
    assert ctx.canvas_hw == (900, 900) and ctx.output_hw == (528, 528)
    assert place("segnet", (375, 500)).canvas_hw == (224, 224)
    assert place("enet", (1024, 2048)).canvas_hw == (512, 1024)
    with pytest.raises(ValueError, match="does not fit"):
        place("fcn8s_voc", (600, 400))
    with pytest.raises(ValueError, match="does not fit"):
        place("dilated_voc", (600, 400))  # 600 + 372 > 900: tiling is not supported


@pytest.mark.parametrize("name", ["segnet", "enet"])
def test_no_mean_protocols_resize_the_raw_image(name):
    protocol = Protocol.from_dict(PROTOCOLS[name])
    image = _image((50, 70), seed=4)
    x, ctx = protocol.prepare(image)
    w, h = PROTOCOLS[name]["resize"]["size"]
    expected = cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, atol=1e-4)


@pytest.mark.parametrize("name,image_hw", [("fcn8s_voc", (375, 500)), ("crfrnn", (200, 300)),
                                           ("dilated_voc", (375, 500)), ("dilated_cs", (64, 128))])
def test_input_to_image_inverts_prepare_for_pad_protocols(name, image_hw):
    protocol = Protocol.from_dict(PROTOCOLS[name])
    image = _image(image_hw, seed=5)
    x, ctx = protocol.prepare(image)
    np.testing.assert_allclose(protocol.input_to_image(x, ctx), image, atol=1e-3)


@pytest.mark.parametrize("name", ["segnet", "pspnet_voc", "enet"])
def test_input_to_image_for_resize_protocols_keeps_a_flat_image(name):
    # bilinear up- then down-sampling is not an identity, but it keeps constants
    protocol = Protocol.from_dict(PROTOCOLS[name])
    image = np.full((90, 130, 3), (10, 200, 77), np.uint8)
    x, ctx = protocol.prepare(image)
    np.testing.assert_allclose(protocol.input_to_image(x, ctx), image, atol=1e-3)


def _caffe_interp_reference(a, out_hw):
    """Brute-force loop of Caffe's Interp forward (align corners)."""
    c, h1, w1 = a.shape
    h2, w2 = out_hw
    rh = (h1 - 1) / (h2 - 1) if h2 > 1 else 0.0
    rw = (w1 - 1) / (w2 - 1) if w2 > 1 else 0.0
    out = np.zeros((c, h2, w2))
    for y in range(h2):
        y1r = rh * y
        y1 = int(y1r)
        yp = 1 if y1 < h1 - 1 else 0
        ly = y1r - y1
        for x in range(w2):
            x1r = rw * x
            x1 = int(x1r)
            xp = 1 if x1 < w1 - 1 else 0
            lx = x1r - x1
            out[:, y, x] = ((1 - ly) * ((1 - lx) * a[:, y1, x1] + lx * a[:, y1, x1 + xp])
                            + ly * ((1 - lx) * a[:, y1 + yp, x1] + lx * a[:, y1 + yp, x1 + xp]))
    return out


def _zoom_reference(a, zoom, out_hw):
    """Brute-force loop of the dilation repo's interp_map (source = dst / zoom, clamped)."""
    c, h, w = a.shape
    out = np.zeros((c,) + tuple(out_hw))
    for y in range(out_hw[0]):
        r0 = min(y // zoom, h - 1)
        r1 = min(r0 + 1, h - 1)
        rt = y / zoom - y // zoom if y // zoom < h - 1 else 0.0
        for x in range(out_hw[1]):
            c0 = min(x // zoom, w - 1)
            c1 = min(c0 + 1, w - 1)
            ct = x / zoom - x // zoom if x // zoom < w - 1 else 0.0
            v0 = rt * a[:, r1, c0] + (1 - rt) * a[:, r0, c0]
            v1 = rt * a[:, r1, c1] + (1 - rt) * a[:, r0, c1]
            out[:, y, x] = (1 - ct) * v0 + ct * v1
    return out


def test_resize_chw_matches_independent_references():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(3, 9, 7)).astype(np.float32)
    np.testing.assert_allclose(resize_chw(a, (33, 25), "corners"),
                               _caffe_interp_reference(a, (33, 25)), atol=1e-5)
    np.testing.assert_allclose(resize_chw(a, (72, 56), "stride"),
                               _zoom_reference(a, 8, (72, 56)), atol=1e-5)
    for out_hw in ((20, 13), (4, 3)):  # up and down
        ref = cv2.resize(a.transpose(1, 2, 0), (out_hw[1], out_hw[0]),
                         interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        np.testing.assert_allclose(resize_chw(a, out_hw, "half_pixel"), ref, atol=1e-4)


def test_deeplab_65_to_513_corners_equals_zoom_by_8():
    a = np.random.default_rng(7).normal(size=(2, 65, 65)).astype(np.float32)
    np.testing.assert_allclose(resize_chw(a, (513, 513), "corners"),
                               resize_chw(a, (520, 520), "stride")[:, :513, :513], atol=1e-5)


def test_crop_mode_rejects_a_coarser_score_grid():
    protocol = Protocol.from_dict(PROTOCOLS["fcn8s_voc"])
    _, ctx = protocol.prepare(_image((100, 100)))
    with pytest.raises(ValueError, match="crop"):
        protocol.scores_to_label_grid(np.zeros((1, 21, 65, 65), np.float32), ctx)


@pytest.mark.parametrize("src,dst", [("fcn8s_voc", "dilated_voc"), ("fcn8s_voc", "segnet"),
                                     ("dilated_voc", "pspnet_voc"), ("crfrnn", "deeplab_65"),
                                     ("dilated_cs", "enet")])
def test_map_delta_equals_perturbing_the_image(src, dst):
    """With a src protocol that only pads, delta on src's image region is an image
    perturbation d, and dst.prepare(image + d) - dst.prepare(image) is map_delta's answer."""
    p_src, p_dst = Protocol.from_dict(PROTOCOLS[src]), Protocol.from_dict(PROTOCOLS[dst])
    image = _image((60, 80), seed=8)
    d = np.random.default_rng(9).uniform(-8, 8, size=(60, 80, 3)).astype(np.float32)
    x_src, ctx_src = p_src.prepare(image)
    x_src_adv, _ = p_src.prepare(image.astype(np.float32) + d)
    delta = x_src_adv - x_src
    # garbage in src's padding must not leak into dst
    m = ctx_src.margin
    outside = np.ones(ctx_src.canvas_hw, bool)
    outside[m:m + 60, m:m + 80] = False
    delta[0][:, outside] = 1000.0
    x_dst, ctx_dst = p_dst.prepare(image)
    x_dst_adv, _ = p_dst.prepare(image.astype(np.float32) + d)
    mapped = p_src.map_delta(delta, ctx_src, p_dst, ctx_dst)
    assert mapped.shape == x_dst.shape
    np.testing.assert_allclose(mapped, x_dst_adv - x_dst, atol=2e-3)


def test_map_delta_between_equal_canvases_keeps_everything():
    p = Protocol.from_dict(PROTOCOLS["deeplab_65"])
    q = Protocol.from_dict(PROTOCOLS["fcn8s_voc"])  # same canvas, different mean
    image = _image((100, 150))
    _, ctx = p.prepare(image)
    delta = np.random.default_rng(10).normal(size=(1, 3, 513, 513)).astype(np.float32)
    np.testing.assert_array_equal(p.map_delta(delta, ctx, p, ctx), delta)
    # another protocol: only the image region carries over, the constant pad is 0
    mapped = p.map_delta(delta, ctx, q, q.prepare(image)[1])
    np.testing.assert_allclose(mapped[0, :, :100, :150], delta[0, :, :100, :150], atol=1e-6)
    assert np.all(mapped[0, :, 100:] == 0)


def test_map_delta_from_a_resize_protocol_keeps_a_flat_delta():
    p_src = Protocol.from_dict(PROTOCOLS["segnet"])
    p_dst = Protocol.from_dict(PROTOCOLS["fcn8s_voc"])
    image = _image((100, 150))
    _, ctx_src = p_src.prepare(image)
    _, ctx_dst = p_dst.prepare(image)
    delta = np.full((1, 3, 224, 224), 4.0, np.float32)
    mapped = p_src.map_delta(delta, ctx_src, p_dst, ctx_dst)
    np.testing.assert_allclose(mapped[0, :, :100, :150], 4.0, atol=1e-5)
    assert np.all(mapped[0, :, 100:, :] == 0) and np.all(mapped[0, :, :, 150:] == 0)


def test_from_dict_rejects_bad_blocks_and_round_trips():
    good = PROTOCOLS["dilated_voc"]
    for bad in ({**good, "extra": 1},
                {**good, "pad": {"mode": "edge", "margin": 3}},
                {**good, "pad": {"mode": "constant"}},
                {**good, "pad": {"mode": "reflect101"}},
                {**good, "resize": {"scale": 2}},
                {**good, "mean_bgr": [1, 2]},
                {**good, "scores_to_labels": "argmax"}):
        with pytest.raises(ValueError):
            Protocol.from_dict(bad)
    for block in PROTOCOLS.values():
        assert Protocol.from_dict(Protocol.from_dict(block).to_dict()) == Protocol.from_dict(block)
    # the plain manifest blocks keep exactly the schema's four keys and target_blob
    assert set(Protocol.from_dict(PROTOCOLS["deeplab_65"]).to_dict()) == {
        "mean_bgr", "resize", "pad", "scores_to_labels", "target_blob"}
    assert Protocol.from_dict(PROTOCOLS["dilated_voc"]).score_align == "stride"
    assert Protocol.from_dict(PROTOCOLS["deeplab_65"]).score_align == "corners"


@pytest.mark.parametrize("change", [
    {"mean_bgr": [1, 2, "3"]}, {"mean_bgr": [1, 2, True]}, {"mean_bgr": 104.0},
    {"resize": {"size": [500.0, 500]}}, {"resize": {"size": [0, 500]}},
    {"resize": {"long_side": True}}, {"resize": {"long_side": 473, "shrink_only": "false"}},
    {"resize": [473]}, {"pad": "constant"}, {"pad": {"mode": "constant", "canvas": [513]}},
    {"pad": {"mode": "reflect101", "margin": -1}},
    {"pad": {"mode": "reflect101", "margin": 1.5}},
    {"pad": {"mode": "reflect101", "margin": 3, "canvas": [900, True]}},
], ids=lambda c: json.dumps(c))
def test_from_dict_checks_types_not_just_keys(change):
    # each of these used to be coerced (int(), float(), bool("false") is True) or
    # to fail with a TypeError/AttributeError instead of a ValueError naming the key
    block = dict(PROTOCOLS["deeplab_65"], **change)
    with pytest.raises(ValueError, match=next(iter(change)).split("_")[0]):
        Protocol.from_dict(block)


def test_from_dict_refuses_a_non_object():
    with pytest.raises(ValueError, match="object"):
        Protocol.from_dict([1, 2])


MANIFEST = os.path.join(os.path.dirname(__file__), os.pardir, "weights_manifest.json")


@pytest.mark.skipif(not os.path.isfile(MANIFEST), reason="weights_manifest.json not written yet")
def test_every_manifest_input_block_parses_and_places_an_image():
    with open(MANIFEST) as f:
        models = json.load(f)["models"]
    assert models
    for name, entry in models.items():
        protocol = Protocol.from_dict(entry["input"])
        hw = (512, 1024) if entry.get("dataset") == "cityscapes" else (96, 128)
        x, ctx = protocol.prepare(_image(hw))
        assert x.shape[2:] == ctx.canvas_hw, name
        scores = np.zeros((1, 4) + ctx.output_hw, np.float32)
        assert protocol.scores_to_label_grid(scores, ctx).shape == (4,) + hw, name
