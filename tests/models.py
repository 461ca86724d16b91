"""Small numpy models implementing the model protocol, for attack tests."""
import numpy as np


class LinearPixelModel:
    """scores[n, c] = sum_k W[c, k] x[n, k] + b[c] at every pixel (a 1x1 conv).

    Counts calls so tests can check iteration schedules.
    """

    def __init__(self, W, b):
        self.W = np.asarray(W, np.float64)
        self.b = np.asarray(b, np.float64)
        self.num_classes = self.W.shape[0]
        self.forwards = 0
        self.gradients = 0

    def forward(self, x):
        self.forwards += 1
        s = np.einsum("ck,nkhw->nchw", self.W, x.astype(np.float64))
        return (s + self.b[None, :, None, None]).astype(np.float32)

    def input_gradient(self, x, dscores):
        self.gradients += 1
        return np.einsum("ck,nchw->nkhw", self.W, dscores.astype(np.float64)).astype(np.float32)


class TanhConvModel:
    """A small nonlinear model: 1x1 conv, tanh, 1x1 conv, plus a 3x3 box blur.

    Nonlinear and spatially coupled, so iterative attacks differ from one step.
    """

    def __init__(self, channels=3, hidden=8, classes=4, seed=0):
        rng = np.random.default_rng(seed)
        self.W1 = rng.normal(0, 0.05, (hidden, channels))
        self.W2 = rng.normal(0, 1.0, (classes, hidden))
        self.num_classes = classes

    @staticmethod
    def _blur(a):
        p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        h, w = a.shape[2:]
        return sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0

    def forward(self, x):
        self._h = np.tanh(np.einsum("dk,nkhw->ndhw", self.W1, self._blur(x.astype(np.float64))))
        return np.einsum("cd,ndhw->nchw", self.W2, self._h).astype(np.float32)

    def input_gradient(self, x, dscores):
        self.forward(x)
        dh = np.einsum("cd,nchw->ndhw", self.W2, dscores.astype(np.float64)) * (1 - self._h ** 2)
        # The box blur is symmetric, so it is its own transpose.
        return self._blur(np.einsum("dk,ndhw->nkhw", self.W1, dh)).astype(np.float32)
