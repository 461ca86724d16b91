"""Tables and figures from the results store and the experiment definitions; never runs a net.

:mod:`.tables` (Markdown, CSV, LaTeX beside the paper's values),
:mod:`.figures` (PNG and PDF), :func:`render` (one definition into a results folder).
"""
from caffe_attacks.report.render import render

__all__ = ["render"]
