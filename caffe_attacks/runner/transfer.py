"""Black-box transfer: craft on a source net, evaluate on target nets (Tables A15-A18).

Nets are named ``NAME[@VARIANT]`` (:func:`caffe_attacks.zoo.multiscale.
parse_member`): ``deeplabv2_resnet101_msc_voc@0.5`` is the 50 % member of
DeepLab's multiscale net, ``fcn8s_vgg_voc_authors@max`` FCN-8s made
multiscale at test time.

Where source and target share the input canvas (same protocol and placement,
e.g. all scales of one net: the resizing happens inside the nets) the target
sees exactly the source's adversarial input. Otherwise the perturbation goes
through image space with :meth:`Protocol.map_delta` (crop the image
rectangle, resize to the image, place as the target places an image) and is
added to the target's clean input; see docs/FIDELITY.md, "Multiscale and
transfer".

A transfer record's configuration is the target's white-box configuration
plus ``"source"`` (the source net's name, weights md5, protocol and score
blob); the clean record of a target carries no source (it does not depend on
one) and so is shared with the white-box run's. A run from a net to itself
therefore reproduces the white-box numbers under a different key.
"""
from caffe_attacks.runner.sweep import summarize, sweep
from caffe_attacks.runner.units import (DEFAULT_UNIT_IMAGES, WorkSpec, resolve_net,
                                        transfer_targets)

__all__ = ["resolve_net", "transfer_targets", "run_transfer", "transfer_spec"]


def transfer_spec(source, targets, options):
    """The WorkSpec of a transfer: workers resolve the nets by label and weights file."""
    return WorkSpec(options, ((source.name, source.weights_path),
                              tuple((t.name, t.weights_path) for t in targets)))


def run_transfer(dataset, ids, source, targets, store, options, progress=True, executor=None,
                 unit_images=DEFAULT_UNIT_IMAGES):
    """Craft on ``source``, evaluate on every target over ``ids`` (resuming).

    executor: None runs here; else the units go to its workers (see
    :func:`caffe_attacks.runner.sweep.sweep`).
    Returns {target name: summary rows}.
    """
    plan = transfer_targets(source, targets, options)
    spec = transfer_spec(source, targets, options) if executor is not None else None
    sweep(dataset, ids, source, plan, store, options, progress=progress,
          desc="%s->" % source.name, executor=executor, spec=spec, unit_images=unit_images)
    return {t.model.name: summarize(store, t.configs, ids, with_source=True) for t in plan}
