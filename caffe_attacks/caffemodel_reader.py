"""Read layer names and parameter blobs from a ``.caffemodel`` without pycaffe.

Caffemodels of the paper come from five Caffe forks (BVLC, PSPNet's, DeepLab's,
SegNet/ENet's, CRF-RNN's). Each fork extended ``caffe.proto`` differently, so a
file written by one fork may carry fields our Caffe does not know, or field
numbers that our Caffe types differently, and ``Net.copy_from`` can refuse it.
This module decodes the protobuf wire format itself and keeps only what a
weight transfer needs:

* ``NetParameter.layer`` (field 100, V2 ``LayerParameter``: name 1, type 2,
  blobs 7),
* legacy ``NetParameter.layers`` (field 2, ``V1LayerParameter``: name 4,
  type enum 5, blobs 6; and the pre-V1 nesting ``layer`` 1 ->
  ``V0LayerParameter``: name 1, type 2, blobs 50),
* ``BlobProto``: shape 7 (``BlobShape.dim`` 1, packed int64), legacy
  num/channels/height/width 1-4, data 5 (packed float), double_data 8.

Every other field, of any wire type, is skipped. A field whose number we know
but whose wire type differs from ours (a fork reused the number) is skipped
with a warning instead of being misread.

``load_caffemodel_into(net, path)`` assigns the blobs to ``net.params`` by
layer name with shape checks and reports what did not match.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

# Protobuf wire types.
VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_NAMES = {VARINT: "varint", FIXED64: "fixed64", LEN: "length-delimited",
               START_GROUP: "start-group", END_GROUP: "end-group", FIXED32: "fixed32"}

# V1LayerParameter.LayerType, as in BVLC caffe.proto; forks' extra values are
# reported as "V1_TYPE_<n>".
V1_LAYER_TYPES = {
    0: "NONE", 1: "ACCURACY", 2: "BNLL", 3: "CONCAT", 4: "CONVOLUTION", 5: "DATA",
    6: "DROPOUT", 7: "EUCLIDEAN_LOSS", 8: "FLATTEN", 9: "HDF5_DATA",
    10: "HDF5_OUTPUT", 11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS",
    14: "INNER_PRODUCT", 15: "LRN", 16: "MULTINOMIAL_LOGISTIC_LOSS", 17: "POOLING",
    18: "RELU", 19: "SIGMOID", 20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT",
    23: "TANH", 24: "WINDOW_DATA", 25: "ELTWISE", 26: "POWER",
    27: "SIGMOID_CROSS_ENTROPY_LOSS", 28: "HINGE_LOSS", 29: "MEMORY_DATA",
    30: "ARGMAX", 31: "THRESHOLD", 32: "DUMMY_DATA", 33: "SLICE", 34: "MVN",
    35: "ABSVAL", 36: "SILENCE", 37: "CONTRASTIVE_LOSS", 38: "EXP",
    39: "DECONVOLUTION",
}


class CaffemodelFormatError(ValueError):
    """The file is not a well-formed protobuf NetParameter (truncated, corrupt)."""


class WeightShapeError(ValueError):
    """A blob in the file cannot be assigned to the net's blob of that layer."""


@dataclass
class LayerRecord:
    """One layer of a caffemodel.

    Attributes
    ----------
    name : str
    type : str
        V2 type string ("Convolution"), or the V1 enum name ("CONVOLUTION").
    blobs : list of np.ndarray
        Parameter blobs in file order, each shaped as stored (float32, or
        float64 when the file used ``double_data``).
    format : str
        "V2" (``layer``), "V1" (``layers``) or "V0" (``layers { layer {} }``).
    """
    name: str
    type: str
    blobs: list
    format: str


@dataclass
class Caffemodel:
    """The parts of a NetParameter a weight transfer needs."""
    name: str
    layers: list
    warnings: list = field(default_factory=list)

    def params(self) -> dict:
        """Layer name -> list of blobs, for layers that store blobs.

        A name that occurs twice keeps the last occurrence, as
        ``Net.copy_from`` (which copies source layers in order) would.
        """
        return {layer.name: layer.blobs for layer in self.layers if layer.blobs}


# --------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------

def _read_varint(buf: bytes, pos: int, end: int) -> tuple:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise CaffemodelFormatError("truncated varint at byte %d" % pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CaffemodelFormatError("varint longer than 10 bytes at byte %d" % pos)


def _skip_group(buf: bytes, pos: int, end: int, number: int) -> int:
    """Skip a (deprecated) group up to its END_GROUP tag; return the position after it."""
    for num, wire, _value, pos in _iter_fields_raw(buf, pos, end, stop_group=number):
        if wire == END_GROUP:
            return pos
    raise CaffemodelFormatError("unterminated group %d" % number)


def _iter_fields_raw(buf: bytes, pos: int, end: int, stop_group: int = 0) -> Iterator[tuple]:
    """Yield (field number, wire type, value, position after the field).

    value: int for varints; (start, stop) byte offsets for length-delimited,
    fixed32 and fixed64 fields; None for skipped groups.
    """
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffemodelFormatError("field number 0 at byte %d" % pos)
        if wire == VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == FIXED64:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == FIXED32:
            value, pos = (pos, pos + 4), pos + 4
        elif wire == LEN:
            length, pos = _read_varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire == START_GROUP:
            pos = _skip_group(buf, pos, end, number)
            value = None
        elif wire == END_GROUP:
            if number != stop_group:
                raise CaffemodelFormatError("unexpected end-group %d at byte %d" % (number, pos))
            yield number, wire, None, pos
            return
        else:
            raise CaffemodelFormatError("invalid wire type %d at byte %d" % (wire, pos))
        if pos > end:
            raise CaffemodelFormatError("field %d runs past the end of its message "
                                        "(byte %d > %d): truncated file?" % (number, pos, end))
        yield number, wire, value, pos


class _Fields:
    """Decode one message, keeping only the fields of ``schema``.

    schema: field number -> (field name, set of accepted wire types).
    Unknown numbers are skipped silently; known numbers with another wire type
    are skipped and counted in ``conflicts`` (reported once per kind).
    """

    def __init__(self, buf: bytes, span: tuple, schema: Mapping, message: str,
                 conflicts: Counter):
        self.found: dict = {}
        for number, wire, value, _ in _iter_fields_raw(buf, span[0], span[1]):
            spec = schema.get(number)
            if spec is None:
                continue
            name, wires = spec
            if wire not in wires:
                conflicts[(message, number, name, wire)] += 1
                continue
            self.found.setdefault(name, []).append((wire, value))

    def last(self, name: str, default=None):
        values = self.found.get(name)
        return values[-1][1] if values else default

    def all(self, name: str) -> list:
        return self.found.get(name, [])


NET_SCHEMA = {1: ("name", {LEN}), 100: ("layer", {LEN}), 2: ("layers", {LEN})}
LAYER_V2_SCHEMA = {1: ("name", {LEN}), 2: ("type", {LEN}), 7: ("blobs", {LEN})}
LAYER_V1_SCHEMA = {4: ("name", {LEN}), 5: ("type", {VARINT}), 6: ("blobs", {LEN}),
                   1: ("layer", {LEN})}
LAYER_V0_SCHEMA = {1: ("name", {LEN}), 2: ("type", {LEN}), 50: ("blobs", {LEN})}
# Repeated scalars may be packed (LEN) or not; a parser must accept both.
BLOB_SCHEMA = {1: ("num", {VARINT}), 2: ("channels", {VARINT}), 3: ("height", {VARINT}),
               4: ("width", {VARINT}), 5: ("data", {LEN, FIXED32}), 7: ("shape", {LEN}),
               8: ("double_data", {LEN, FIXED64})}
SHAPE_SCHEMA = {1: ("dim", {LEN, VARINT})}


def _text(buf: bytes, span: tuple) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(buf: bytes, span: tuple) -> list:
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = _read_varint(buf, pos, span[1])
        values.append(_int64(value))
    return values


def _repeated_numbers(buf: bytes, entries: list, dtype: str, width: int) -> np.ndarray:
    """Concatenate packed chunks and unpacked elements of a repeated float/double."""
    chunks = []
    for wire, (start, stop) in entries:
        if wire == LEN and (stop - start) % width:
            raise CaffemodelFormatError("packed %s field of %d bytes is not a multiple of %d"
                                        % (dtype, stop - start, width))
        chunks.append(np.frombuffer(buf, dtype=dtype, count=(stop - start) // width,
                                    offset=start))
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _decode_blob(buf: bytes, span: tuple, conflicts: Counter, where: str) -> np.ndarray:
    f = _Fields(buf, span, BLOB_SCHEMA, "BlobProto", conflicts)
    legacy = [f.last(key) for key in ("num", "channels", "height", "width")]
    if any(v is not None for v in legacy):
        # As Blob::FromProto: any legacy dim present means a 4-D legacy shape
        # whose absent dims take the proto default 0.
        shape = tuple(_int64(v or 0) for v in legacy)
    else:
        dims = []
        for _, shape_span in f.all("shape"):  # repeated occurrences merge
            sf = _Fields(buf, shape_span, SHAPE_SCHEMA, "BlobShape", conflicts)
            for wire, value in sf.all("dim"):
                dims.extend(_packed_varints(buf, value) if wire == LEN else [_int64(value)])
        shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise CaffemodelFormatError("%s: negative blob dimension %s" % (where, shape))
    data = _repeated_numbers(buf, f.all("data"), "<f4", 4)
    double = _repeated_numbers(buf, f.all("double_data"), "<f8", 8)
    values = double if double.size and not data.size else data
    expected = int(np.prod(shape, dtype=np.int64))
    if values.size != expected:
        raise CaffemodelFormatError("%s: blob of shape %s holds %d values, expected %d"
                                    % (where, shape, values.size, expected))
    return values.reshape(shape)


def _decode_layer(buf: bytes, span: tuple, fmt: str, conflicts: Counter) -> LayerRecord:
    if fmt == "V2":
        f = _Fields(buf, span, LAYER_V2_SCHEMA, "LayerParameter", conflicts)
        kind = _text(buf, f.last("type")) if f.last("type") else ""
    elif fmt == "V1":
        f = _Fields(buf, span, LAYER_V1_SCHEMA, "V1LayerParameter", conflicts)
        nested = f.last("layer")
        if nested is not None and f.last("name") is None:
            return _decode_layer(buf, nested, "V0", conflicts)
        enum = f.last("type", 0)
        kind = V1_LAYER_TYPES.get(enum, "V1_TYPE_%d" % enum)
    else:
        f = _Fields(buf, span, LAYER_V0_SCHEMA, "V0LayerParameter", conflicts)
        kind = _text(buf, f.last("type")) if f.last("type") else ""
    name = _text(buf, f.last("name")) if f.last("name") else ""
    blobs = [_decode_blob(buf, blob_span, conflicts, "layer %r blob %d" % (name, i))
             for i, (_, blob_span) in enumerate(f.all("blobs"))]
    return LayerRecord(name=name, type=kind, blobs=blobs, format=fmt)


def parse_caffemodel(data: Union[bytes, bytearray, memoryview]) -> Caffemodel:
    """Decode a serialized NetParameter.

    Parameters
    ----------
    data : bytes
        The whole file. Returned blobs are read-only views into it (no copy).

    Returns
    -------
    Caffemodel
        Layers in file order: all V2 ``layer`` entries first, then legacy
        ``layers`` (a file normally holds only one kind; both is warned about).
    """
    buf = bytes(data) if not isinstance(data, bytes) else data
    conflicts: Counter = Counter()
    net = _Fields(buf, (0, len(buf)), NET_SCHEMA, "NetParameter", conflicts)
    layers = [_decode_layer(buf, span, "V2", conflicts) for _, span in net.all("layer")]
    layers += [_decode_layer(buf, span, "V1", conflicts) for _, span in net.all("layers")]
    warnings = []
    if net.all("layer") and net.all("layers"):
        warnings.append("file holds both V2 'layer' and V1 'layers' entries; reading both "
                        "(Caffe would refuse to upgrade such a file)")
    for (message, number, name, wire), count in sorted(conflicts.items()):
        warnings.append("skipped %s field %d (%s) %d time(s): wire type %s, ours is %s "
                        "(a fork uses this number differently)"
                        % (message, number, name, count, _WIRE_NAMES.get(wire, wire),
                           "/".join(_WIRE_NAMES[w] for w in
                                    sorted(_schema_of(message)[number][1]))))
    for message in warnings:
        log.warning(message)
    name = _text(buf, net.last("name")) if net.last("name") else ""
    return Caffemodel(name=name, layers=layers, warnings=warnings)


def _schema_of(message: str) -> Mapping:
    return {"NetParameter": NET_SCHEMA, "LayerParameter": LAYER_V2_SCHEMA,
            "V1LayerParameter": LAYER_V1_SCHEMA, "V0LayerParameter": LAYER_V0_SCHEMA,
            "BlobProto": BLOB_SCHEMA, "BlobShape": SHAPE_SCHEMA}[message]


def read_caffemodel(path: Union[str, Path]) -> Caffemodel:
    """Read and decode a caffemodel file (see ``parse_caffemodel``).

    Raises CaffemodelFormatError naming the file when it is not a regular
    file (a directory; a FIFO would block), cannot be read, or does not decode.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CaffemodelFormatError("weights %s %s, not a caffemodel file"
                                    % (path, "is a directory" if path.is_dir() else "is special"))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaffemodelFormatError("cannot read weights %s: %s"
                                    % (path, e.strerror or e)) from None
    try:
        return parse_caffemodel(data)
    except CaffemodelFormatError as e:
        raise CaffemodelFormatError("%s is not a caffemodel: %s" % (path, e)) from None


# --------------------------------------------------------------------------
# Loading into a net
# --------------------------------------------------------------------------

def shapes_compatible(stored: Sequence[int], target: Sequence[int]) -> bool:
    """True when a stored blob can fill a target blob by a plain reshape.

    Same number of elements and the same dims once singleton dims are dropped:
    (C,) fits (1, C, 1, 1), a legacy (1, 1, out, in) fits (out, in); a
    transposed or differently split shape does not.
    """
    squeeze = lambda shape: tuple(int(d) for d in shape if d != 1)  # noqa: E731
    return (int(np.prod(stored, dtype=np.int64)) == int(np.prod(target, dtype=np.int64))
            and squeeze(stored) == squeeze(target))


@dataclass
class LoadReport:
    """What ``load_caffemodel_into`` did.

    Attributes
    ----------
    loaded : list of str
        Net layers whose every blob was filled from the file.
    only_in_file : list of str
        Layers with blobs in the file but no parameter layer of that name in
        the net (ignored, as Caffe ignores them).
    only_in_net : list of str
        Net parameter layers absent from the file (left as initialised).
    values : int
        Number of scalars copied.
    warnings : list of str
        Reader warnings (skipped conflicting fields, duplicate names).
    """
    path: str
    loaded: list = field(default_factory=list)
    only_in_file: list = field(default_factory=list)
    only_in_net: list = field(default_factory=list)
    values: int = 0
    warnings: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every net parameter layer was filled (file extras are allowed)."""
        return not self.only_in_net

    def summary(self) -> str:
        lines = ["%s: %d layers, %d values loaded" % (self.path, len(self.loaded), self.values)]
        if self.only_in_net:
            lines.append("  in the net but not in the file (left as initialised): "
                         + ", ".join(self.only_in_net))
        if self.only_in_file:
            lines.append("  in the file but not in the net (ignored): "
                         + ", ".join(self.only_in_file))
        lines += ["  warning: " + w for w in self.warnings]
        return "\n".join(lines)


def load_caffemodel_into(net, path: Union[str, Path], *,
                         model: Caffemodel = None) -> LoadReport:
    """Assign a caffemodel's blobs to ``net.params`` by layer name.

    Parameters
    ----------
    net : caffe.Net or any object with ``params``: mapping layer name ->
        sequence of blobs with a writable ``.data`` ndarray.
    path : str or Path
        The caffemodel.
    model : Caffemodel, optional
        An already decoded file (then ``path`` only labels the report).

    Returns
    -------
    LoadReport

    Raises
    ------
    WeightShapeError
        When any matched layer has a different number of blobs or a blob whose
        shape is not reshape-compatible (``shapes_compatible``). All such
        layers are named, and nothing is assigned.
    """
    if model is None:
        model = read_caffemodel(path)
    report = LoadReport(path=str(path), warnings=list(model.warnings))
    seen = Counter(layer.name for layer in model.layers if layer.blobs)
    for name, count in seen.items():
        if count > 1:
            report.warnings.append("layer %r appears %d times in the file; the last one is "
                                   "used" % (name, count))
    stored = model.params()
    net_params = net.params
    errors, plan = [], []
    for name in net_params:
        if name not in stored:
            report.only_in_net.append(name)
            continue
        targets, blobs = net_params[name], stored[name]
        if len(targets) != len(blobs):
            errors.append("layer %r: the file has %d blobs, the net %d"
                          % (name, len(blobs), len(targets)))
            continue
        for i, (target, blob) in enumerate(zip(targets, blobs)):
            if not shapes_compatible(blob.shape, target.data.shape):
                errors.append("layer %r blob %d: file shape %s, net shape %s"
                              % (name, i, tuple(blob.shape), tuple(target.data.shape)))
            else:
                plan.append((target, blob))
        report.loaded.append(name)
    if errors:
        raise WeightShapeError("cannot load %s:\n  %s" % (path, "\n  ".join(errors)))
    for target, blob in plan:
        target.data[...] = blob.reshape(target.data.shape)
        report.values += blob.size
    report.only_in_file = [name for name in stored if name not in net_params]
    for message in report.warnings[len(model.warnings):]:
        log.warning(message)
    return report


def batchnorm_shares(layers):
    """{copy layer: owner layer} for BatchNorm statistics declared shared.

    Caffe's UpgradeNetBatchNorm clears the ``param`` specs of every BatchNorm
    layer that declares exactly three, so a multiscale net's BatchNorm copies
    silently get blobs of their own, which a single-scale caffemodel does not
    fill. ``layers``: iterable of (name, type, [param names]) in net order.
    """
    owners, copies = {}, {}
    for name, type_, param_names in layers:
        if type_ != "BatchNorm" or len(param_names) != 3 or not all(param_names):
            continue
        key = tuple(param_names)
        if key in owners:
            copies[name] = owners[key]
        else:
            owners[key] = name
    return copies


def restore_batchnorm_sharing(params, shares, report=None):
    """Copy owners' BatchNorm statistics into their copies (see batchnorm_shares).

    params: mapping layer -> list of blobs with ``.data`` (a caffe.Net's params);
    report: the LoadReport of the load just done; copies that the caffemodel
    filled by their own name are left as loaded. Returns the copies filled.
    """
    missing = None if report is None else set(report.only_in_net)
    filled = []
    for copy, owner in shares.items():
        if missing is not None and copy not in missing:
            continue
        for dst, src in zip(params[copy], params[owner]):
            dst.data[...] = src.data
        filled.append(copy)
    return filled
