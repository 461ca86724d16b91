"""A tiny protobuf *writer* for tests: builds caffemodels field by field.

Independent of caffe_attacks.caffemodel_reader (which only reads), so tests
can write well-formed files, files with fork-specific extra fields, files
that reuse a field number with another wire type, and the V1/V0 formats.
"""
import struct

import numpy as np

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def varint(value):
    if value < 0:
        value += 1 << 64          # int64 two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number, wire):
    return varint((number << 3) | wire)


def f_varint(number, value):
    return tag(number, VARINT) + varint(value)


def f_bytes(number, payload):
    return tag(number, LEN) + varint(len(payload)) + payload


def f_string(number, text):
    return f_bytes(number, text.encode("utf-8"))


def f_fixed32(number, raw4):
    return tag(number, FIXED32) + raw4


def f_fixed64(number, raw8):
    return tag(number, FIXED64) + raw8


def f_group(number, body):
    return tag(number, START_GROUP) + body + tag(number, END_GROUP)


def packed_floats(values):
    return np.asarray(values, dtype="<f4").tobytes()


def blob(array, *, legacy=False, packed=True, double=False, extra=b""):
    """BlobProto bytes: shape 7 (or legacy 1-4), data 5 / double_data 8."""
    array = np.asarray(array)
    body = b""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        for number, dim in zip((1, 2, 3, 4), dims):
            body += f_varint(number, dim)
    else:
        dims = b"".join(varint(d) for d in array.shape)
        body += f_bytes(7, f_bytes(1, dims) if dims else b"")   # BlobShape.dim, packed
    flat = array.ravel()
    if double:
        body += f_bytes(8, flat.astype("<f8").tobytes())
    elif packed:
        body += f_bytes(5, packed_floats(flat))
    else:
        body += b"".join(f_fixed32(5, struct.pack("<f", v)) for v in flat)
    return body + extra


def layer_v2(name, kind, blobs=(), extra=b""):
    return f_string(1, name) + f_string(2, kind) + b"".join(f_bytes(7, b) for b in blobs) + extra


def layer_v1(name, type_enum, blobs=(), extra=b""):
    return f_string(4, name) + f_varint(5, type_enum) + b"".join(f_bytes(6, b) for b in blobs) \
        + extra


def layer_v0(name, kind, blobs=()):
    inner = f_string(1, name) + f_string(2, kind) + b"".join(f_bytes(50, b) for b in blobs)
    return f_bytes(1, inner)      # V1LayerParameter.layer = 1 wraps it


def net(layers=(), v1_layers=(), name="tiny", extra=b""):
    return (f_string(1, name) + extra + b"".join(f_bytes(100, l) for l in layers)
            + b"".join(f_bytes(2, l) for l in v1_layers))
