"""Permutohedral-lattice Gaussian filtering (Adams, Baek & Davis, Eurographics 2010).

A high-dimensional Gaussian filter ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j``
is approximated in three linear steps on the permutohedral lattice A*_d:

splat
    every feature vector, lifted onto the hyperplane ``sum x = 0`` of R^(d+1),
    falls in one simplex; its value is spread over the d+1 vertices with
    barycentric weights.
blur
    along each of the d+1 lattice directions in turn, every vertex becomes
    ``v + (v_prev + v_next) / 2`` (kernel [1 2 1] / 2); absent neighbours
    count as zero.
slice
    the blurred vertex values are read back with the same barycentric weights,
    times ``1 / (1 + 2^-d)``.

The constants (feature scale ``sqrt(2/3) (d+1) / sqrt((i+1)(i+2))``, the
[1 2 1]/2 blur and the slice factor) are those of the lattice used by
Kraehenbuehl's DenseCRF and crfasrnn's ``ModifiedPermutohedral``; the
mean-field layer divides by the filtered ones, so they cancel there except
against the 1e-20 guard.

Every step is linear, so the filter is a matrix ``K = a S^T B_d ... B_0 S``
with S the splat matrix and each B_j symmetric (the neighbour relation along
a direction is symmetric).  Its transpose -- what backward needs -- is the
same filter with the blur order reversed.

The lattice depends only on the features, so it is built once (hashing done
with ``np.unique``) and then applied to any number of value arrays; splat and
slice are sparse matrix products and the blur is a gather per direction.
numba, when installed, runs splat, blur and slice as plain loops instead
(about twice as fast; the same results up to float rounding).
"""
import logging

import numpy as np
import scipy.sparse

try:
    import numba
except ImportError:  # numba is optional: the numpy blur below is the fallback
    numba = None

log = logging.getLogger(__name__)


def _blur_numpy(values, neighbours, order):
    """In-place-free blur: ``values`` (M + 1, V), last row zero; returns a new array."""
    out = values
    scratch = np.empty_like(values)
    for j in order:
        n1, n2 = neighbours[j]
        np.add(out[n1], out[n2], out=scratch[:-1])
        scratch[:-1] *= 0.5
        scratch[:-1] += out[:-1]
        scratch[-1] = 0
        if out is values:
            out = scratch
            scratch = np.empty_like(values)
        else:
            out, scratch = scratch, out
    return out


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _splat_numba(values, offsets, weights, num_points, scale):
        out = np.zeros((num_points + 1, values.shape[1]), dtype=values.dtype)
        for i in range(values.shape[0]):
            for r in range(offsets.shape[1]):
                o, w = offsets[i, r], weights[i, r] * scale[i]
                for k in range(values.shape[1]):
                    out[o, k] += w * values[i, k]
        return out

    @numba.njit(cache=True, nogil=True)
    def _slice_numba(lattice_values, offsets, weights, scale):
        out = np.zeros((offsets.shape[0], lattice_values.shape[1]), dtype=lattice_values.dtype)
        for i in range(offsets.shape[0]):
            for r in range(offsets.shape[1]):
                o, w = offsets[i, r], weights[i, r] * scale[i]
                for k in range(lattice_values.shape[1]):
                    out[i, k] += w * lattice_values[o, k]
        return out

    @numba.njit(cache=True, nogil=True)
    def _simplices_numba(features, scale):
        """Per-pixel loop version of _simplex_of + _vertex_keys (same arithmetic)."""
        n, d = features.shape
        keys = np.empty((n, d + 1, d), dtype=np.int64)
        bary_out = np.empty((n, d + 1))
        elevated = np.empty(d + 1)
        rem0 = np.empty(d + 1, dtype=np.int64)
        rank = np.empty(d + 1, dtype=np.int64)
        bary = np.empty(d + 2)
        for p in range(n):
            suffix = 0.0
            for j in range(d, 0, -1):
                cf = features[p, j - 1] * scale[j - 1]
                elevated[j] = suffix - j * cf
                suffix += cf
            elevated[0] = suffix
            total = 0
            for i in range(d + 1):
                v = elevated[i] / (d + 1)
                up = np.ceil(v) * (d + 1)
                down = np.floor(v) * (d + 1)
                rem0[i] = np.int64(up) if up - elevated[i] < elevated[i] - down else np.int64(down)
                total += rem0[i]
            excess = total // (d + 1)
            for i in range(d + 1):
                rank[i] = 0
            for a in range(d + 1):
                for b in range(a + 1, d + 1):
                    if elevated[a] - rem0[a] < elevated[b] - rem0[b]:
                        rank[a] += 1
                    else:
                        rank[b] += 1
            for i in range(d + 1):
                if excess > 0 and rank[i] >= d + 1 - excess:
                    rem0[i] -= d + 1
                    rank[i] += excess - (d + 1)
                elif excess < 0 and rank[i] < -excess:
                    rem0[i] += d + 1
                    rank[i] += excess + (d + 1)
                else:
                    rank[i] += excess
            for i in range(d + 2):
                bary[i] = 0.0
            for i in range(d + 1):
                delta = (elevated[i] - rem0[i]) / (d + 1)
                bary[d - rank[i]] += delta
                bary[d + 1 - rank[i]] -= delta
            bary[0] += 1.0 + bary[d + 1]
            for r in range(d + 1):
                bary_out[p, r] = bary[r]
                for k in range(d):
                    keys[p, r, k] = rem0[k] + (r if rank[k] <= d - r else r - (d + 1))
        return keys, bary_out

    @numba.njit(cache=True, nogil=True)
    def _encode_numba(keys, low, radix):
        codes = np.empty(keys.shape[0], dtype=np.int64)
        for i in range(keys.shape[0]):
            c = 0
            for k in range(keys.shape[1]):
                c += (keys[i, k] - low[k]) * radix[k]
            codes[i] = c
        return codes

    @numba.njit(cache=True, nogil=True)
    def _blur_pass(src, dst, n1, n2):
        m, v = dst.shape[0] - 1, dst.shape[1]
        for i in range(m):
            a, b = n1[i], n2[i]
            for k in range(v):
                dst[i, k] = src[i, k] + 0.5 * (src[a, k] + src[b, k])
        for k in range(v):
            dst[m, k] = 0.0

    def _blur_numba(values, neighbours, order):
        src, dst = values, np.empty_like(values)
        for j in order:
            n1, n2 = neighbours[j]
            _blur_pass(src, dst, n1, n2)
            src, dst = dst, src
        return src


class PermutohedralLattice:
    """The lattice of one set of features, reusable for many filterings.

    Parameters
    ----------
    features : (N, d) array, already divided by the kernel's standard
        deviations (e.g. ``x / theta``); the filter approximates
        ``exp(-|f_i - f_j|^2 / 2)``.
    use_numba : bool or None, run the blur with numba (None: when installed)

    Attributes
    ----------
    num_pixels : N
    dim : d
    num_points : M, the lattice vertices touched by the features
    """

    def __init__(self, features, use_numba=None):
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError("features must be (N, d) with d >= 1, got %s" % (features.shape,))
        self.num_pixels, self.dim = features.shape
        self.use_numba = (numba is not None) if use_numba is None else bool(use_numba)
        if self.use_numba and numba is None:
            raise ValueError("use_numba=True but numba is not installed")
        if self.use_numba:
            vertices, bary = _simplices_numba(features, _feature_scale(self.dim))
            vertices = vertices.reshape(-1, self.dim)
            codec = _KeyCodec(vertices)
            codes = _encode_numba(vertices, codec.low, codec.radix)
        else:
            rem0, rank, bary = _simplex_of(features)
            vertices = _vertex_keys(rem0, rank).reshape(-1, self.dim)   # (N (d+1), d)
            codec = _KeyCodec(vertices)
            codes = codec.encode(vertices)
        self._codes, offsets = np.unique(codes, return_inverse=True)
        self.num_points = self._codes.size
        offsets = offsets.reshape(self.num_pixels, self.dim + 1)
        index_dtype = np.int32 if self.num_points < 2**31 else np.int64
        self._neighbours = [self._neighbours_along(codec.radix, j, index_dtype)
                            for j in range(self.dim + 1)]
        # Row M of the lattice values is the "absent neighbour" slot, always zero.
        self._offsets = offsets.astype(index_dtype)
        self._weights = bary[:, :self.dim + 1]
        self._slice_scale = 1.0 / (1.0 + 2.0 ** -self.dim)
        self._typed = {}
        log.debug("lattice: %d pixels, d=%d, %d vertices", self.num_pixels, self.dim, self.num_points)

    def _neighbours_along(self, radix, j, index_dtype):
        """Indices (into M + 1 rows) of the two neighbours of every vertex along direction j.

        Direction j adds d to coordinate j and -1 to the others (d+1
        coordinates in all; j = d changes only the implicit last one).  Keys
        are packed linearly with a margin beyond every key, so a neighbour's
        code is the vertex's code plus a constant.
        """
        step = -int(radix.sum())
        if j < self.dim:
            step += (self.dim + 1) * int(radix[j])
        return (self._lookup(self._codes + step, index_dtype),
                self._lookup(self._codes - step, index_dtype))

    def _lookup(self, codes, index_dtype):
        pos = np.minimum(np.searchsorted(self._codes, codes), self.num_points - 1)
        return np.where(self._codes[pos] == codes, pos, self.num_points).astype(index_dtype)

    def _sparse(self, dtype):
        """Splat (M + 1, N) and slice (N, M + 1) matrices, for the numpy path."""
        if dtype not in self._typed:
            rows = self._offsets.ravel()
            cols = np.repeat(np.arange(self.num_pixels), self.dim + 1)
            splat = scipy.sparse.csr_matrix(
                (self._weights.ravel().astype(dtype), (rows, cols)),
                shape=(self.num_points + 1, self.num_pixels))
            slice_ = (splat.T * dtype(self._slice_scale)).tocsr()
            self._typed[dtype] = (splat, slice_)
        return self._typed[dtype]

    def _weights_as(self, dtype):
        """Splat and slice weights (N, d+1) in dtype, for the numba path."""
        key = ("weights", dtype)
        if key not in self._typed:
            self._typed[key] = (self._weights.astype(dtype),
                                (self._weights * self._slice_scale).astype(dtype))
        return self._typed[key]

    def filter(self, values, transpose=False, pre_scale=None, post_scale=None):
        """Gaussian-filter ``values`` over the features' space.

        Parameters
        ----------
        values : (N, V) or (N,) float32/float64 array
        transpose : bool, apply the transpose of the filter (blur order
            d..0 instead of 0..d), as backward needs
        pre_scale, post_scale : optional (N,) per-pixel factors applied to
            the values before splatting / to the result after slicing (folded
            into the splat and slice weights)

        Returns
        -------
        (N, V) or (N,) array of values' dtype
        """
        values = np.asarray(values)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        dtype = values.dtype.type
        flat = np.ascontiguousarray(values.reshape(self.num_pixels, -1))
        order = range(self.dim, -1, -1) if transpose else range(self.dim + 1)
        if self.use_numba:
            ones = self._ones(dtype)
            pre = ones if pre_scale is None else np.ascontiguousarray(pre_scale, dtype=dtype).ravel()
            post = ones if post_scale is None else np.ascontiguousarray(post_scale, dtype=dtype).ravel()
            splat_w, slice_w = self._weights_as(dtype)
            lattice_values = _splat_numba(flat, self._offsets, splat_w, self.num_points, pre)
            blurred = _blur_numba(lattice_values, self._neighbours, order)
            out = _slice_numba(blurred, self._offsets, slice_w, post)
        else:
            splat, slice_ = self._sparse(dtype)
            if pre_scale is not None:
                flat = flat * np.asarray(pre_scale, dtype=dtype).reshape(-1, 1)
            lattice_values = np.ascontiguousarray(splat @ flat)   # (M + 1, V), last row 0
            blurred = _blur_numpy(lattice_values, self._neighbours, order)
            out = slice_ @ blurred
            if post_scale is not None:
                out *= np.asarray(post_scale, dtype=dtype).reshape(-1, 1)
        return out.reshape(values.shape).astype(values.dtype, copy=False)

    def _ones(self, dtype):
        key = ("ones", dtype)
        if key not in self._typed:
            self._typed[key] = np.ones(self.num_pixels, dtype=dtype)
        return self._typed[key]


def _feature_scale(d):
    """Per-axis scale of the elevation that makes the blur match a unit Gaussian."""
    inv_std = np.sqrt(2.0 / 3.0) * (d + 1)
    return inv_std / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))


def _simplex_of(features):
    """Enclosing simplex of every feature vector on A*_d.

    Returns
    -------
    rem0 : (N, d+1) int64, the remainder-0 vertex (coordinates multiples of d+1)
    rank : (N, d+1) int64, rank of each coordinate of the offset from rem0
    bary : (N, d+2) float64, barycentric weights (column r for the vertex of remainder r)
    """
    n, d = features.shape
    cf = features * _feature_scale(d)
    suffix = np.cumsum(cf[:, ::-1], axis=1)[:, ::-1]             # suffix[:, j] = sum_{k>=j} cf_k
    elevated = np.empty((n, d + 1))
    elevated[:, 0] = suffix[:, 0]
    j = np.arange(1, d + 1)
    elevated[:, 1:] = np.concatenate([suffix[:, 1:], np.zeros((n, 1))], axis=1) - j * cf

    # Nearest point with all coordinates multiples of d+1 (ties go down, as the original).
    v = elevated / (d + 1)
    up = np.ceil(v) * (d + 1)
    down = np.floor(v) * (d + 1)
    rem0 = np.where(up - elevated < elevated - down, up, down).astype(np.int64)
    excess = rem0.sum(axis=1) // (d + 1)

    # Rank of each residual, largest first; ties ordered by index (earlier one ranks lower).
    res = elevated - rem0
    rank = np.zeros((n, d + 1), dtype=np.int64)
    for a in range(d + 1):
        for b in range(a + 1, d + 1):
            a_less = res[:, a] < res[:, b]
            rank[:, a] += a_less
            rank[:, b] += ~a_less

    # Fold the point back onto the remainder-0 hyperplane sum rem0 = 0.
    ex = excess[:, None]
    pos = ex > 0
    down_shift = pos & (rank >= d + 1 - ex)
    neg = ex < 0
    up_shift = neg & (rank < -ex)
    rem0 = rem0 - (d + 1) * down_shift + (d + 1) * up_shift
    rank = rank + ex - (d + 1) * down_shift + (d + 1) * up_shift

    # Barycentric coordinates from the sorted residuals.
    bary = np.zeros((n, d + 2))
    rows = np.arange(n)
    delta = (elevated - rem0) / (d + 1)
    for i in range(d + 1):
        bary[rows, d - rank[:, i]] += delta[:, i]
        bary[rows, d + 1 - rank[:, i]] -= delta[:, i]
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0, rank, bary


def _vertex_keys(rem0, rank):
    """First d coordinates of the d+1 simplex vertices: (N, d+1, d) int64.

    The vertex of remainder r is rem0 + the canonical simplex point r, whose
    coordinate k is r where rank_k <= d - r and r - (d+1) otherwise.
    """
    n, d1 = rem0.shape
    d = d1 - 1
    r = np.arange(d1)[None, :, None]                              # (1, d+1, 1)
    rk = rank[:, None, :d]                                        # (N, 1, d)
    canonical = np.where(rk <= d - r, r, r - d1)
    return rem0[:, None, :d] + canonical


class _KeyCodec:
    """Packs integer lattice keys (first d coordinates) into one int64 by mixed radix."""

    def __init__(self, keys):
        # A margin of d+1 each side so that every neighbour of a vertex is encodable.
        self.low = keys.min(axis=0) - keys.shape[1] - 1
        self.high = keys.max(axis=0) + keys.shape[1] + 1
        span = [int(s) for s in self.high - self.low + 1]
        radix, total = [], 1
        for s in reversed(span):  # exact Python ints: no silent overflow
            radix.append(total)
            total *= s
        if total >= 2**62:
            raise ValueError("lattice keys span too large to pack into int64 (%d); "
                             "features are too spread for their scale" % total)
        self.radix = np.array(radix[::-1], dtype=np.int64)

    def encode(self, keys):
        return ((keys - self.low) * self.radix).sum(axis=1)
