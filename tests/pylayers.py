"""Test-only Caffe Python layers (importable as tests.pylayers)."""
import json

import caffe


class Square(caffe.Layer):
    """y = scale * x**2, to check that Python layers run forward and backward."""

    def setup(self, bottom, top):
        self.scale = json.loads(self.param_str or "{}").get("scale", 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * self.scale * bottom[0].data * top[0].diff
