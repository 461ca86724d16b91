"""``MultiStageMeanfield``: CRF-RNN's mean-field inference as a Caffe Python layer.

Semantics of crfasrnn's Caffe layer (torrvision/caffe, branch crfrnn,
``src/caffe/layers/multi_stage_meanfield.cpp`` and ``meanfield_iteration.cpp``).  Bottoms [unary U, Q0, data] of shapes (N, C, H, W),
(N, C, H, W), (N, 3, H, W); top (N, C, H, W).  For t = 1..T::

    Q_t   = softmax_c(prev_{t-1})            prev_0 = Q0
    S_t   = norm_s * K_s Q_t                 features (x, y) / theta_gamma
    B_t   = norm_b * K_b Q_t                 features (x, y) / theta_alpha, data[0:3] / theta_beta
    out_t = U - mu (W_s S_t + W_b B_t)       (C x C matrices acting on the class axis)
    prev_t = out_t

The top is out_T (not softmax-normalised).  K are permutohedral-lattice
Gaussian filters (caffe_attacks.lattice), self-contribution included, and
``norm = 1 / (K 1 + 1e-20)``.  Backward runs every iteration in reverse and
gives gradients to U, Q0 and the three blobs; none flows into ``data`` (the
original treats the bilateral features as constants).

Blobs (added in ``setup``, each 1x1xCxC as the public model, so that
``Net.copy_from`` fills them for a layer named ``inference1``):
[0] W_s spatial-kernel weights, init spatial_filter_weight * I;
[1] W_b bilateral-kernel weights, init bilateral_filter_weight * I;
[2] mu compatibility, init -I ("potts").

param_str keys (JSON): num_iterations, theta_alpha, theta_beta, theta_gamma,
spatial_filter_weight, bilateral_filter_weight, compatibility ("potts").
Unlike the original, which builds the spatial lattice once in LayerSetUp and
so fixes the input size, any H, W work here (lattices are cached per size).
"""
import json
import logging

import numpy as np

from caffe_attacks.caffe_geometry import parse_param_str
from caffe_attacks.lattice import PermutohedralLattice

try:
    import numba
except ImportError:  # optional: numpy softmax below
    numba = None

try:
    import caffe
    _Layer = caffe.Layer
except ImportError:  # the numpy inference below stays usable without pycaffe
    _Layer = object

log = logging.getLogger(__name__)

PARAM_KEYS = {"num_iterations": int, "theta_alpha": float, "theta_beta": float,
              "theta_gamma": float, "spatial_filter_weight": float,
              "bilateral_filter_weight": float}

# The values of the public CRF-RNN VOC deploy (layer inference1).
DEFAULTS = {"num_iterations": 10, "theta_alpha": 160.0, "theta_beta": 3.0, "theta_gamma": 3.0,
            "spatial_filter_weight": 3.0, "bilateral_filter_weight": 5.0,
            "compatibility": "potts"}

COMPATIBILITY_MODES = ("potts",)

# The guard of the original's normalisation 1 / (K 1 + 1e-20).
NORM_EPS = 1e-20


def parse_meanfield_params(param_str):
    """Layer parameters from JSON ``param_str``, defaults filled in.

    Returns
    -------
    dict with every key of DEFAULTS

    Raises
    ------
    ValueError on unknown keys, wrong types or values out of range
    """
    text = (param_str or "").strip()
    raw = json.loads(text) if text else {}
    if not isinstance(raw, dict):
        raise ValueError("MultiStageMeanfield param_str must be a JSON object, got %r" % param_str)
    compatibility = raw.pop("compatibility", DEFAULTS["compatibility"])
    if compatibility not in COMPATIBILITY_MODES:
        raise ValueError("MultiStageMeanfield compatibility must be one of %s, got %r"
                         % (COMPATIBILITY_MODES, compatibility))
    params = dict(DEFAULTS)
    params.update(parse_param_str(json.dumps(raw), PARAM_KEYS, "MultiStageMeanfield"))
    params["compatibility"] = compatibility
    if params["num_iterations"] < 1:
        raise ValueError("num_iterations must be >= 1, got %d" % params["num_iterations"])
    for key in ("theta_alpha", "theta_beta", "theta_gamma"):
        if not params[key] > 0:
            raise ValueError("%s must be > 0, got %r" % (key, params[key]))
    return params


def initial_blobs(num_classes, params):
    """The three blobs as the original initialises them (before copy_from).

    Returns
    -------
    list of three (1, 1, C, C) float32 arrays: W_s, W_b, mu
    """
    eye = np.eye(num_classes, dtype=np.float32)[None, None]
    if params["compatibility"] != "potts":
        raise ValueError("unsupported compatibility %r" % params["compatibility"])
    return [params["spatial_filter_weight"] * eye,
            params["bilateral_filter_weight"] * eye,
            -eye]


def spatial_features(height, width, theta_gamma):
    """(H*W, 2) float32 features (x, y) / theta_gamma, pixel p = y * W + x."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    return np.stack([x.ravel(), y.ravel()], axis=1) / np.float32(theta_gamma)


def bilateral_features(image, theta_alpha, theta_beta):
    """(H*W, 5) float32 features (x, y) / theta_alpha, image channels / theta_beta.

    image : (3, H, W), the ``data`` blob of one image (mean-subtracted BGR)
    """
    _, height, width = image.shape
    xy = spatial_features(height, width, theta_alpha)
    colour = image.reshape(3, -1).T.astype(np.float32) / np.float32(theta_beta)
    return np.concatenate([xy, colour], axis=1)


class NormalisedFilter:
    """A lattice Gaussian filter with crfasrnn's normalisation, per dtype.

    ``apply(v) = norm * K v`` and ``apply_transpose(g) = K^T (norm * g)``
    with ``norm = 1 / (K 1 + 1e-20)``.
    """

    def __init__(self, features, use_numba=None):
        self.lattice = PermutohedralLattice(features, use_numba=use_numba)
        self._norms = {}

    def norm(self, dtype):
        if dtype not in self._norms:
            ones = np.ones(self.lattice.num_pixels, dtype=dtype)
            self._norms[dtype] = (1.0 / (self.lattice.filter(ones) + NORM_EPS)).astype(dtype)
        return self._norms[dtype]

    def apply(self, values):
        return self.lattice.filter(values, post_scale=self.norm(values.dtype.type))

    def apply_transpose(self, grad):
        return self.lattice.filter(grad, transpose=True, pre_scale=self.norm(grad.dtype.type))


def _softmax_rows_numpy(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _softmax_rows_numba(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            top = x[i, 0]
            for k in range(1, x.shape[1]):
                top = max(top, x[i, k])
            total = 0.0
            for k in range(x.shape[1]):
                out[i, k] = np.exp(x[i, k] - top)
                total += out[i, k]
            for k in range(x.shape[1]):
                out[i, k] /= total
        return out


    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _pairwise_update_numba(u, s, a_t, b, b_t):
        out = u.copy()
        for i in range(u.shape[0]):
            for k in range(u.shape[1]):
                sk, bk = s[i, k], b[i, k]
                for c in range(u.shape[1]):
                    out[i, c] -= a_t[k, c] * sk + b_t[k, c] * bk
        return out


    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _rows_times_matrix_numba(g, m):
        """-g m for (P, C) g and (C, C) m."""
        out = np.zeros_like(g)
        for i in range(g.shape[0]):
            for c in range(g.shape[1]):
                gc = g[i, c]
                for k in range(g.shape[1]):
                    out[i, k] -= gc * m[c, k]
        return out

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _outer_sum_numba(g, s):
        """g^T s for (P, C) arrays, summed in g's dtype over blocks of pixels and
        then in float64 (vectorisable, without round-off growing with P)."""
        pixels, channels = g.shape
        total = np.zeros((channels, channels))
        block = np.zeros((channels, channels), dtype=g.dtype)
        for start in range(0, pixels, 512):
            block[:] = 0
            for i in range(start, min(start + 512, pixels)):
                for c in range(channels):
                    gc = g[i, c]
                    for k in range(channels):
                        block[c, k] += gc * s[i, k]
            total += block
        return total

    def _message_backward_numba(g, s, b, mu_ws, mu_wb):
        return (_rows_times_matrix_numba(g, mu_ws), _rows_times_matrix_numba(g, mu_wb),
                _outer_sum_numba(g, s), _outer_sum_numba(g, b))

    @numba.njit(cache=True, nogil=True)
    def _softmax_backward_numba(q, dq):
        out = np.empty_like(q)
        for i in range(q.shape[0]):
            dot = 0.0
            for k in range(q.shape[1]):
                dot += dq[i, k] * q[i, k]
            for k in range(q.shape[1]):
                out[i, k] = q[i, k] * (dq[i, k] - dot)
        return out


def message_backward(g, s, b, mu_ws, mu_wb):
    """Backward of ``out = u - s mu_ws^T - b mu_wb^T`` given g = dL/dout (P, C).

    Returns
    -------
    ds, db : (P, C), dL/ds = -g mu_ws and dL/db = -g mu_wb
    g_s, g_b : (C, C) float64, g^T s and g^T b (the blob gradients follow
        from these: see MeanfieldInference.backward)
    """
    if numba is not None and g.dtype in (np.float32, np.float64):
        return _message_backward_numba(np.ascontiguousarray(g), s, b,
                                       np.ascontiguousarray(mu_ws, dtype=g.dtype),
                                       np.ascontiguousarray(mu_wb, dtype=g.dtype))
    return (-g @ mu_ws, -g @ mu_wb, (g.T @ s).astype(np.float64), (g.T @ b).astype(np.float64))


def softmax_backward(q, dq):
    """dL/dx of q = softmax_rows(x) given dq = dL/dq, both (P, C)."""
    if numba is not None and q.dtype in (np.float32, np.float64):
        return _softmax_backward_numba(q, np.ascontiguousarray(dq, dtype=q.dtype))
    return q * (dq - (dq * q).sum(axis=1, keepdims=True))


def pairwise_update(u, s, mu_ws, b, mu_wb):
    """``u - s mu_ws^T - b mu_wb^T`` for (P, C) arrays and (C, C) matrices.

    With numba a single-threaded fused loop: as fast as one-thread BLAS on
    these skinny products, and immune to BLAS thread oversubscription, which
    made them 4x slower on a loaded machine.
    """
    if numba is not None and u.dtype in (np.float32, np.float64):
        return _pairwise_update_numba(u, s, np.ascontiguousarray(mu_ws.T), b,
                                      np.ascontiguousarray(mu_wb.T))
    out = u - s @ mu_ws.T
    out -= b @ mu_wb.T
    return out


def softmax_rows(x):
    """Softmax over the last axis of (P, C) (one fused pass with numba)."""
    if numba is not None and x.dtype in (np.float32, np.float64):
        return _softmax_rows_numba(np.ascontiguousarray(x))
    return _softmax_rows_numpy(x)


class MeanfieldInference:
    """Mean-field forward and backward for a batch, independent of Caffe.

    Parameters
    ----------
    params : dict as parse_meanfield_params returns
    use_numba : bool or None, passed to PermutohedralLattice (None: when installed)

    Lattices are cached: the spatial one per (H, W); the bilateral one per
    image, rebuilt only when that image's data change.
    """

    def __init__(self, params, use_numba=None):
        self.params = dict(params)
        self.use_numba = use_numba
        self._spatial = {}
        self._bilateral = {}   # batch index -> (image copy, filter)
        self._tape = None

    def spatial_filter(self, height, width):
        key = (height, width)
        if key not in self._spatial:
            self._spatial = {key: NormalisedFilter(
                spatial_features(height, width, self.params["theta_gamma"]), self.use_numba)}
        return self._spatial[key]

    def bilateral_filter(self, n, image):
        cached = self._bilateral.get(n)
        if cached is None or cached[0].shape != image.shape or not np.array_equal(cached[0], image):
            filt = NormalisedFilter(
                bilateral_features(image, self.params["theta_alpha"], self.params["theta_beta"]),
                self.use_numba)
            cached = (np.array(image, copy=True), filt)
            self._bilateral[n] = cached
        return cached[1]

    def forward(self, unary, q0, image, blobs):
        """Run num_iterations of mean-field; keep what backward needs.

        Parameters
        ----------
        unary, q0 : (N, C, H, W) float32 or float64
        image : (N, 3, H, W), the data blob (bilateral features)
        blobs : [W_s, W_b, mu], each (C, C) or (1, 1, C, C)

        Returns
        -------
        (N, C, H, W) array of unary's dtype, out_T
        """
        unary = np.asarray(unary)
        q0 = np.asarray(q0, dtype=unary.dtype)
        num, channels, height, width = unary.shape
        if q0.shape != unary.shape:
            raise ValueError("Q0 shape %s differs from unary shape %s" % (q0.shape, unary.shape))
        if image.shape != (num, 3, height, width):
            raise ValueError("data must be (%d, 3, %d, %d), got %s"
                             % (num, height, width, image.shape))
        ws, wb, mu = (np.asarray(b, dtype=unary.dtype).reshape(channels, channels) for b in blobs)
        mu_ws, mu_wb = mu @ ws, mu @ wb   # mu (W_s S + W_b B) with two products, not three
        spatial = self.spatial_filter(height, width)
        out = np.empty_like(unary)
        tape = []
        for n in range(num):
            bilateral = self.bilateral_filter(n, np.asarray(image[n]))
            u = np.ascontiguousarray(unary[n].reshape(channels, -1).T)
            prev = q0[n].reshape(channels, -1).T
            steps = []
            for _ in range(self.params["num_iterations"]):
                q = softmax_rows(prev)
                s = spatial.apply(q)
                b = bilateral.apply(q)
                prev = pairwise_update(u, s, mu_ws, b, mu_wb)
                steps.append((q, s, b))
            out[n] = prev.T.reshape(channels, height, width)
            tape.append((spatial, bilateral, steps))
        self._tape = (tape, (ws, wb, mu), unary.shape)
        return out

    def backward(self, top_diff):
        """Gradients of the last forward, given dL/dout.

        Returns
        -------
        d_unary, d_q0 : (N, C, H, W)
        d_blobs : [dW_s, dW_b, dmu], each (C, C)
        """
        if self._tape is None:
            raise RuntimeError("backward before forward")
        tape, (ws, wb, mu), shape = self._tape
        num, channels, height, width = shape
        dtype = ws.dtype
        top_diff = np.asarray(top_diff, dtype=dtype)
        mu_ws, mu_wb = mu @ ws, mu @ wb
        d_unary = np.zeros(shape, dtype=dtype)
        d_q0 = np.zeros(shape, dtype=dtype)
        # out_t = U - mu (W_s S_t + W_b B_t); with g = dL/dout_t, G_s = g^T S_t, G_b = g^T B_t:
        # dmu = -(G_s W_s^T + G_b W_b^T), dW_s = -mu^T G_s, dW_b = -mu^T G_b.
        g_s_total = np.zeros((channels, channels))
        g_b_total = np.zeros((channels, channels))
        d_mu = np.zeros((channels, channels))
        for n, (spatial, bilateral, steps) in enumerate(tape):
            g = np.ascontiguousarray(top_diff[n].reshape(channels, -1).T)
            du = np.zeros_like(g)
            for q, s, b in reversed(steps):
                du += g
                ds, db, g_s, g_b = message_backward(g, s, b, mu_ws, mu_wb)
                g_s_total += g_s
                g_b_total += g_b
                d_mu -= g_s @ ws.T + g_b @ wb.T
                dq = spatial.apply_transpose(ds)
                dq += bilateral.apply_transpose(db)
                g = softmax_backward(q, dq)
            d_unary[n] = du.T.reshape(channels, height, width)
            d_q0[n] = g.T.reshape(channels, height, width)
        d_ws = (-mu.T @ g_s_total).astype(dtype)
        d_wb = (-mu.T @ g_b_total).astype(dtype)
        d_mu = d_mu.astype(dtype)
        return d_unary, d_q0, [d_ws, d_wb, d_mu]


def deeplab_crf_layer(num_classes=21):
    """The DenseCRF of DeepLab v2 (ResNet-101 release) as MultiStageMeanfield settings.

    DeepLab's post-processing (bi_w 4, bi_xy_std 67, bi_rgb_std 3, pos_w 3,
    pos_xy_std 1, 10 iterations, Potts) expressed in CRF-RNN terms, for
    appending the layer to a DeepLab v2 net (supplementary A5.3):
    theta_alpha = bi_xy_std, theta_beta = bi_rgb_std, theta_gamma =
    pos_xy_std, W_b = bi_w * I, W_s = pos_w * I, mu = -I.  The blobs equal
    the layer's own initialisation, so a net whose caffemodel has no blobs
    for this layer needs nothing copied (name the layer anything but
    ``inference1`` if a CRF-RNN caffemodel is loaded into the same net).

    Bottoms to wire: [unary = the upsampled logits at data's H x W, Q0 = the
    same logits (Split), data]; see docs/FIDELITY.md for how this differs
    from DeepLab's own DenseCRF (its normalisation is symmetric).

    Returns
    -------
    dict with "param_str" (JSON text), "params" (dict) and "blobs" (three
    (1, 1, C, C) float32 arrays: W_s, W_b, mu)
    """
    params = {"num_iterations": 10, "theta_alpha": 67.0, "theta_beta": 3.0,
              "theta_gamma": 1.0, "spatial_filter_weight": 3.0,
              "bilateral_filter_weight": 4.0, "compatibility": "potts"}
    return {"param_str": json.dumps(params, sort_keys=True), "params": params,
            "blobs": initial_blobs(num_classes, params)}


W2_MODES = ("scale_learned", "replace_diagonal")


def crf_variant(overrides, learned_blobs=None, w2_mode="scale_learned"):
    """Layer settings of a CRF-RNN variant for the sweeps of Figures A9-A11.

    Parameters
    ----------
    overrides : dict with any of theta_alpha, theta_beta, theta_gamma,
        num_iterations and "w2" (the spatial-kernel weight); the rest stay at
        the public model's values (DEFAULTS)
    learned_blobs : the three trained (1, 1, C, C) blobs of ``inference1``
        (None: the initial ones, W_s = 3 I)
    w2_mode : how w2 enters, since the trained W_s is a full matrix:
        "scale_learned" multiplies the learned W_s by w2 / 3 (w2 = 3 is the
        public model itself); "replace_diagonal" sets W_s = w2 * I

    Returns
    -------
    dict with "param_str", "params" and "blobs" (three float32 arrays)
    """
    if w2_mode not in W2_MODES:
        raise ValueError("w2_mode must be one of %s, got %r" % (W2_MODES, w2_mode))
    overrides = dict(overrides)
    w2 = float(overrides.pop("w2", DEFAULTS["spatial_filter_weight"]))
    params = parse_meanfield_params(json.dumps(dict(DEFAULTS, **overrides)))
    params["spatial_filter_weight"] = w2
    channels = learned_blobs[0].shape[-1] if learned_blobs is not None else 21
    blobs = [np.array(b, dtype=np.float32) for b in
             (learned_blobs if learned_blobs is not None else initial_blobs(channels, DEFAULTS))]
    if w2_mode == "scale_learned":
        blobs[0] = blobs[0] * np.float32(w2 / DEFAULTS["spatial_filter_weight"])
    else:
        blobs[0] = w2 * np.eye(channels, dtype=np.float32).reshape(blobs[0].shape)
    return {"param_str": json.dumps(params, sort_keys=True), "params": params, "blobs": blobs}


class MultiStageMeanfield(_Layer):
    """crfasrnn's MultiStageMeanfield as a Caffe Python layer (see module docstring)."""

    def setup(self, bottom, top):
        if len(bottom) != 3 or len(top) != 1:
            raise ValueError("MultiStageMeanfield needs bottoms [unary, Q0, data] and one top")
        self.params = parse_meanfield_params(self.param_str)
        self.inference = MeanfieldInference(self.params)
        channels = bottom[0].data.shape[1]
        if len(self.blobs) == 0:
            for init in initial_blobs(channels, self.params):
                self.blobs.add_blob(*init.shape)
                self.blobs[len(self.blobs) - 1].data[...] = init

    def reshape(self, bottom, top):
        shape = bottom[0].data.shape
        if bottom[1].data.shape != shape:
            raise ValueError("Q0 shape %s differs from unary shape %s"
                             % (bottom[1].data.shape, shape))
        if bottom[2].data.shape != (shape[0], 3) + shape[2:]:
            raise ValueError("data shape %s does not match unary %s"
                             % (bottom[2].data.shape, shape))
        top[0].reshape(*shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.inference.forward(
            bottom[0].data, bottom[1].data, bottom[2].data, [b.data for b in self.blobs])

    def backward(self, top, propagate_down, bottom):
        d_unary, d_q0, d_blobs = self.inference.backward(top[0].diff)
        if propagate_down[0]:
            bottom[0].diff[...] = d_unary
        if propagate_down[1]:
            bottom[1].diff[...] = d_q0
        if propagate_down[2]:
            bottom[2].diff[...] = 0   # as the original: no gradient through the features
        for blob, grad in zip(self.blobs, d_blobs):
            blob.diff[...] += grad.reshape(blob.diff.shape)   # Caffe accumulates param diffs
