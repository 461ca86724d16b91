"""The pycaffe-free caffemodel reader and the fork-tolerant loader.

Files are written by tests/protowire.py (our own writer), by google.protobuf
from message definitions built here with BVLC's field numbers (an independent
encoder), and, in the Caffe tier, by ``caffe.Net.save`` itself.
"""
import logging
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from caffe_attacks import caffemodel_reader as reader
from caffe_attacks.caffemodel_reader import (CaffemodelFormatError, WeightShapeError,
                                             load_caffemodel_into, parse_caffemodel,
                                             read_caffemodel, shapes_compatible)
from tests import protowire as pw
from tests.conftest import requires_caffe

RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
CONV_B = RNG.standard_normal(4).astype(np.float32)
BN = RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)
FC_W = RNG.standard_normal((5, 16)).astype(np.float32)


def tiny_v2(extra_layer=b"", extra_blob=b"", extra_net=b""):
    return pw.net(layers=[
        pw.layer_v2("data", "Input"),
        pw.layer_v2("conv1", "Convolution",
                    [pw.blob(CONV_W, extra=extra_blob), pw.blob(CONV_B)], extra=extra_layer),
        pw.layer_v2("relu1", "ReLU", extra=extra_layer),
        pw.layer_v2("bn1", "BN", [pw.blob(BN), pw.blob(-BN)]),
        pw.layer_v2("fc", "InnerProduct", [pw.blob(FC_W)]),
    ], extra=extra_net)


def assert_tiny(model):
    params = model.params()
    assert list(params) == ["conv1", "bn1", "fc"]
    assert [l.name for l in model.layers] == ["data", "conv1", "relu1", "bn1", "fc"]
    assert [l.type for l in model.layers] == ["Input", "Convolution", "ReLU", "BN",
                                               "InnerProduct"]
    for got, want in zip(params["conv1"] + params["bn1"] + params["fc"],
                         [CONV_W, CONV_B, BN, -BN, FC_W]):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_v2_round_trip():
    model = parse_caffemodel(tiny_v2())
    assert model.name == "tiny"
    assert model.warnings == []
    assert all(l.format == "V2" for l in model.layers)
    assert_tiny(model)


ALL_WIRE_TYPES = (pw.f_varint(9001, 300) + pw.f_fixed64(9002, b"\x01" * 8)
                  + pw.f_fixed32(9003, b"\x02" * 4) + pw.f_string(9004, "fork-only")
                  + pw.f_group(9005, pw.f_varint(1, 7) + pw.f_group(2, pw.f_string(3, "x")))
                  + pw.f_bytes(137, pw.f_varint(1, 5)))   # e.g. a fork's bn_param


@pytest.mark.parametrize("where", ["net", "layer", "blob"])
def test_unknown_fields_of_every_wire_type_are_skipped(where):
    kwargs = {"net": {"extra_net": ALL_WIRE_TYPES}, "layer": {"extra_layer": ALL_WIRE_TYPES},
              "blob": {"extra_blob": ALL_WIRE_TYPES}}[where]
    model = parse_caffemodel(tiny_v2(**kwargs))
    assert model.warnings == []
    assert_tiny(model)


def test_conflicting_field_numbers_are_skipped_with_a_warning(caplog):
    # A fork that typed LayerParameter 7 as a varint and BlobProto 5 as a string:
    # decoding them as ours would misread; they are skipped and reported once.
    conflict = pw.f_varint(7, 42) + pw.f_varint(2, 3)
    model_bytes = pw.net(layers=[
        pw.layer_v2("conv1", "Convolution", [pw.blob(CONV_W), pw.blob(CONV_B)], extra=conflict),
        pw.layer_v2("fc", "InnerProduct", [pw.blob(FC_W)], extra=pw.f_varint(7, 1)),
    ])
    with caplog.at_level(logging.WARNING, logger=reader.__name__):
        model = parse_caffemodel(model_bytes)
    params = model.params()
    np.testing.assert_array_equal(params["conv1"][0], CONV_W)
    np.testing.assert_array_equal(params["fc"][0], FC_W)
    assert model.layers[0].type == "Convolution"      # the varint "type" was skipped
    text = "\n".join(model.warnings)
    assert "LayerParameter field 7 (blobs) 2 time(s)" in text
    assert "LayerParameter field 2 (type) 1 time(s)" in text
    assert len(model.warnings) == 2                   # aggregated, not one per layer
    assert "field 7" in caplog.text


def test_conflicting_blob_field_is_skipped():
    data_as_varint = pw.f_varint(5, 1)   # BlobProto.data as a varint
    body = pw.f_bytes(7, pw.f_bytes(1, pw.varint(2))) + data_as_varint \
        + pw.f_bytes(5, pw.packed_floats([1.5, -2.0]))
    model = parse_caffemodel(pw.net(layers=[pw.layer_v2("b", "Bias", [body])]))
    np.testing.assert_array_equal(model.params()["b"][0], [1.5, -2.0])
    assert "BlobProto field 5 (data)" in model.warnings[0]


def test_v1_format():
    model = parse_caffemodel(pw.net(v1_layers=[
        pw.layer_v1("conv1", 4, [pw.blob(CONV_W, legacy=True), pw.blob(CONV_B, legacy=True)]),
        pw.layer_v1("relu1", 18),
        pw.layer_v1("fc", 14, [pw.blob(FC_W, legacy=True)], extra=pw.f_varint(9999, 1)),
        pw.layer_v1("mystery", 77, [pw.blob(BN, legacy=True)]),
    ]))
    assert [(l.name, l.type, l.format) for l in model.layers] == [
        ("conv1", "CONVOLUTION", "V1"), ("relu1", "RELU", "V1"), ("fc", "INNER_PRODUCT", "V1"),
        ("mystery", "V1_TYPE_77", "V1")]
    params = model.params()
    # Legacy blobs are 4-D: (num, channels, height, width), singletons on the left.
    assert params["conv1"][1].shape == (1, 1, 1, 4)
    assert params["fc"][0].shape == (1, 1, 5, 16)
    np.testing.assert_array_equal(params["fc"][0].reshape(5, 16), FC_W)
    np.testing.assert_array_equal(params["conv1"][0], CONV_W)


def test_v0_nested_format():
    model = parse_caffemodel(pw.net(v1_layers=[pw.layer_v0("conv1", "conv",
                                                           [pw.blob(CONV_W, legacy=True)])]))
    assert [(l.name, l.type, l.format) for l in model.layers] == [("conv1", "conv", "V0")]
    np.testing.assert_array_equal(model.params()["conv1"][0], CONV_W)


def test_unpacked_and_double_encodings():
    unpacked_dims = pw.f_bytes(7, pw.f_varint(1, 2) + pw.f_varint(1, 3))
    floats = np.arange(6, dtype=np.float32) - 2.5
    unpacked = unpacked_dims + b"".join(pw.f_fixed32(5, struct.pack("<f", v)) for v in floats)
    model = parse_caffemodel(pw.net(layers=[
        pw.layer_v2("a", "X", [unpacked]),
        pw.layer_v2("b", "X", [pw.blob(floats.reshape(2, 3).astype(np.float64) / 3,
                                        double=True)]),
    ]))
    np.testing.assert_array_equal(model.params()["a"][0], floats.reshape(2, 3))
    got = model.params()["b"][0]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, floats.reshape(2, 3).astype(np.float64) / 3)


def test_duplicate_layer_name_keeps_the_last():
    model = parse_caffemodel(pw.net(layers=[pw.layer_v2("fc", "X", [pw.blob(FC_W)]),
                                            pw.layer_v2("fc", "X", [pw.blob(-FC_W)])]))
    np.testing.assert_array_equal(model.params()["fc"][0], -FC_W)


@pytest.mark.parametrize("cut", [1, 7, 40, -3])
def test_truncated_file_is_a_format_error(cut):
    data = tiny_v2()
    with pytest.raises(CaffemodelFormatError):
        parse_caffemodel(data[:cut] if cut > 0 else data[:cut])


def test_wrong_value_count_names_the_layer():
    bad = pw.f_bytes(7, pw.f_bytes(1, pw.varint(3))) + pw.f_bytes(5, pw.packed_floats([1, 2]))
    with pytest.raises(CaffemodelFormatError, match="layer 'short' blob 0"):
        parse_caffemodel(pw.net(layers=[pw.layer_v2("short", "X", [bad])]))


def test_read_from_file_and_file_extras(tmp_path):
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(tiny_v2())
    assert_tiny(read_caffemodel(path))


# --- an independent encoder: google.protobuf with BVLC's field numbers --------

def _bvlc_subset_classes():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="caffe_subset_test.proto",
                                             package="caffe_subset_test", syntax="proto2")

    def message(name, fields):
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = ".caffe_subset_test." + type_name
            if packed:
                field.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", [("dim", 1, F.TYPE_INT64, rep, None, True)])
    message("BlobProto", [("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
                          ("data", 5, F.TYPE_FLOAT, rep, None, True),
                          ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
                          ("num", 1, F.TYPE_INT32, opt, None, False),
                          ("channels", 2, F.TYPE_INT32, opt, None, False),
                          ("height", 3, F.TYPE_INT32, opt, None, False),
                          ("width", 4, F.TYPE_INT32, opt, None, False)])
    message("LayerParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                               ("type", 2, F.TYPE_STRING, opt, None, False),
                               ("bottom", 3, F.TYPE_STRING, rep, None, False),
                               ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False),
                               ("fork_param", 4242, F.TYPE_STRING, opt, None, False)])
    message("V1LayerParameter", [("name", 4, F.TYPE_STRING, opt, None, False),
                                 ("type", 5, F.TYPE_INT32, opt, None, False),
                                 ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False)])
    message("NetParameter", [("name", 1, F.TYPE_STRING, opt, None, False),
                             ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
                             ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName("caffe_subset_test." + name))
        for name in ("NetParameter", "BlobProto")}


def test_reads_what_google_protobuf_writes():
    classes = _bvlc_subset_classes()
    net = classes["NetParameter"](name="gp")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], fork_param="psp")
    for array in (CONV_W, CONV_B):
        b = conv.blobs.add()
        b.shape.dim.extend(array.shape)
        b.data.extend(array.ravel().tolist())
    legacy = net.layers.add(name="old_fc", type=14)
    lb = legacy.blobs.add(num=1, channels=1, height=5, width=16)
    lb.data.extend(FC_W.ravel().tolist())
    model = parse_caffemodel(net.SerializeToString())
    assert [(l.name, l.type, l.format) for l in model.layers] == [
        ("conv1", "Convolution", "V2"), ("old_fc", "INNER_PRODUCT", "V1")]
    np.testing.assert_array_equal(model.params()["conv1"][0], CONV_W)
    np.testing.assert_array_equal(model.params()["conv1"][1], CONV_B)
    np.testing.assert_array_equal(model.params()["old_fc"][0].reshape(5, 16), FC_W)


def test_our_writer_agrees_with_google_protobuf():
    """Guards the test writer itself: google.protobuf decodes it to the same blob."""
    classes = _bvlc_subset_classes()
    decoded = classes["BlobProto"].FromString(pw.blob(CONV_W))
    assert tuple(decoded.shape.dim) == CONV_W.shape
    np.testing.assert_array_equal(np.array(decoded.data, np.float32), CONV_W.ravel())
    legacy = classes["BlobProto"].FromString(pw.blob(FC_W, legacy=True))
    assert (legacy.num, legacy.channels, legacy.height, legacy.width) == (1, 1, 5, 16)


# --- loading into a net --------------------------------------------------------

@pytest.mark.parametrize("stored, target, ok", [
    ((4,), (1, 4, 1, 1), True),
    ((1, 1, 5, 16), (5, 16), True),
    ((4, 3, 1, 1), (4, 3), True),
    ((5, 16), (16, 5), False),          # transposed
    ((4, 6), (6, 4), False),
    ((2, 12), (4, 6), False),           # same count, other split
    ((4,), (5,), False),
    ((), (1,), True),
], ids=lambda v: str(v))
def test_shapes_compatible(stored, target, ok):
    assert shapes_compatible(stored, target) is ok


def fake_net(shapes):
    """An object with pycaffe's ``net.params`` shape: name -> [blob with .data]."""
    return SimpleNamespace(params={
        name: [SimpleNamespace(data=np.full(s, np.nan, np.float32)) for s in blob_shapes]
        for name, blob_shapes in shapes.items()})


def test_load_into_assigns_by_name_and_reports_both_directions(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(tiny_v2())
    net = fake_net({"conv1": [(4, 3, 3, 3), (4,)], "bn1": [(4,), (1, 4, 1, 1)],
                    "fc": [(1, 1, 5, 16)], "extra_head": [(2, 2)]})
    report = load_caffemodel_into(net, path)
    np.testing.assert_array_equal(net.params["conv1"][0].data, CONV_W)
    np.testing.assert_array_equal(net.params["conv1"][1].data, CONV_B)
    np.testing.assert_array_equal(net.params["bn1"][0].data, BN.ravel())
    np.testing.assert_array_equal(net.params["bn1"][1].data, -BN)
    np.testing.assert_array_equal(net.params["fc"][0].data.reshape(5, 16), FC_W)
    assert np.isnan(net.params["extra_head"][0].data).all()     # untouched
    assert report.loaded == ["conv1", "bn1", "fc"]
    assert report.only_in_net == ["extra_head"] and not report.complete
    assert report.only_in_file == []
    assert report.values == CONV_W.size + CONV_B.size + 2 * BN.size + FC_W.size
    assert "extra_head" in report.summary()


def test_load_into_reports_file_only_layers(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(tiny_v2())
    net = fake_net({"fc": [(5, 16)]})
    report = load_caffemodel_into(net, path)
    assert report.only_in_file == ["conv1", "bn1"] and report.complete


@pytest.mark.parametrize("shapes, message", [
    ({"conv1": [(4, 3, 3, 3), (4,)], "fc": [(16, 5)]}, r"layer 'fc' blob 0: file shape \(5, 16\)"),
    ({"conv1": [(4, 3, 3, 3)], "fc": [(5, 16)]}, "layer 'conv1': the file has 2 blobs, the net 1"),
])
def test_load_into_refuses_incompatible_layers_and_assigns_nothing(tmp_path, shapes, message):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(tiny_v2())
    net = fake_net(shapes)
    with pytest.raises(WeightShapeError, match=message):
        load_caffemodel_into(net, path)
    assert all(np.isnan(b.data).all() for blobs in net.params.values() for b in blobs)


def test_load_into_v1_file_into_modern_shapes(tmp_path):
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(pw.net(v1_layers=[pw.layer_v1("fc", 14, [pw.blob(FC_W, legacy=True)])]))
    net = fake_net({"fc": [(5, 16)]})
    load_caffemodel_into(net, path)
    np.testing.assert_array_equal(net.params["fc"][0].data, FC_W)


# --- Caffe tier -------------------------------------------------------------------

TINY_PROTOTXT = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
"""


@pytest.fixture
def tiny_caffe_net(tmp_path):
    import caffe
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY_PROTOTXT)
    caffe.set_mode_cpu()
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():        # BatchNorm/Scale start constant; vary them
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 1.5, blob.data.shape)
    return net, proto


@requires_caffe
def test_reads_caffe_net_save_blob_for_blob(tiny_caffe_net, tmp_path):
    net, _ = tiny_caffe_net
    path = tmp_path / "saved.caffemodel"
    net.save(str(path))
    model = read_caffemodel(path)
    params = model.params()
    assert list(params) == list(net.params)
    for name, blobs in net.params.items():
        assert len(params[name]) == len(blobs)
        for stored, blob in zip(params[name], blobs):
            assert stored.shape == blob.data.shape
            np.testing.assert_array_equal(stored, blob.data)
    assert {l.name: l.type for l in model.layers}["bn1"] == "BatchNorm"


@requires_caffe
def test_load_into_matches_caffe_copy_from(tiny_caffe_net, tmp_path):
    import caffe
    net, proto = tiny_caffe_net
    path = tmp_path / "saved.caffemodel"
    net.save(str(path))
    reference = caffe.Net(str(proto), str(path), caffe.TEST)      # Caffe's own loader
    ours = caffe.Net(str(proto), caffe.TEST)
    report = load_caffemodel_into(ours, path)
    assert report.complete and report.only_in_file == []
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = {}
    for key, n in (("ref", reference), ("ours", ours)):
        n.blobs["data"].data[...] = x
        out[key] = n.forward()["fc"].copy()
    np.testing.assert_array_equal(out["ours"], out["ref"])


@requires_caffe
def test_caffe_reads_our_writer_v1_and_v2_like_we_do(tmp_path):
    """Caffe's copy_from (which upgrades V1) and our loader agree on our files."""
    import caffe
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY_PROTOTXT)
    shapes = {name: [b.data.shape for b in blobs]
              for name, blobs in caffe.Net(str(proto), caffe.TEST).params.items()}
    rng = np.random.default_rng(3)
    arrays = {name: [rng.standard_normal(s).astype(np.float32) for s in ss]
              for name, ss in shapes.items()}
    v2 = pw.net(layers=[pw.layer_v2(n, "X", [pw.blob(a) for a in arrays[n]]) for n in arrays])
    v1 = pw.net(v1_layers=[pw.layer_v1(n, 4, [pw.blob(a, legacy=True) for a in arrays[n]])
                           for n in arrays])
    for label, data in (("v2", v2), ("v1", v1)):
        path = tmp_path / (label + ".caffemodel")
        path.write_bytes(data)
        theirs = caffe.Net(str(proto), str(path), caffe.TEST)
        ours = caffe.Net(str(proto), caffe.TEST)
        load_caffemodel_into(ours, path)
        for name in arrays:
            for a, t, o in zip(arrays[name], theirs.params[name], ours.params[name]):
                np.testing.assert_array_equal(t.data, a.reshape(t.data.shape))
                np.testing.assert_array_equal(o.data, t.data)


PSP_FORK_PROTOTXT = """
name: "psp_tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "conv1_bn" type: "Python" bottom: "conv1" top: "conv1_bn"
  python_param { module: "caffe_attacks.layers.bn" layer: "PSPBN" } }
"""


@requires_caffe
def test_pspnet_fork_file_into_python_bn_layer(tmp_path):
    """A file as PSPNet's Caffe writes it (type "BN", fork-only fields, a field number
    this Caffe types differently) loads into our Python BN layer by name."""
    import caffe
    pytest.importorskip("caffe_attacks.layers.bn")
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    slope, bias, mean = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    fork_bn_param = pw.f_bytes(4137, pw.f_fixed32(3, struct.pack("<f", 0.95)) + pw.f_varint(5, 1))
    data = pw.net(layers=[
        pw.layer_v2("data", "Input"),
        pw.layer_v2("conv1", "Convolution", [pw.blob(w)], extra=pw.f_string(4138, "mem")),
        pw.layer_v2("conv1_bn", "BN",
                    [pw.blob(slope.reshape(1, 4, 1, 1)), pw.blob(bias),   # (1,C,1,1) and (C,)
                     pw.blob(mean.reshape(1, 4, 1, 1)), pw.blob(var.reshape(1, 4, 1, 1))],
                    extra=fork_bn_param + pw.f_varint(7, 0)),             # 7 = blobs for us
        pw.layer_v2("conv1_aux", "Convolution", [pw.blob(w)]),          # training-only layer
    ])
    path = tmp_path / "psp_fork.caffemodel"
    path.write_bytes(data)
    proto = tmp_path / "psp.prototxt"
    proto.write_text(PSP_FORK_PROTOTXT)
    net = caffe.Net(str(proto), caffe.TEST)
    report = load_caffemodel_into(net, path)
    assert report.loaded == ["conv1", "conv1_bn"] and report.only_in_file == ["conv1_aux"]
    assert any("field 7" in message for message in report.warnings)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    conv = net.blobs["conv1"].data
    expected = (slope[:, None, None] * (conv[0] - mean[:, None, None])
                / np.sqrt(var[:, None, None] + 1e-5) + bias[:, None, None])
    np.testing.assert_allclose(net.blobs["conv1_bn"].data[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net.params["conv1"][0].data, w)
