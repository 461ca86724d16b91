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
from caffe_attacks.runner.pipeline import (Target, make_configs, record_base,
                                           transfer_source_fields)
from caffe_attacks.runner.resolve import check_classes, resolve_model
from caffe_attacks.runner.sweep import summarize, sweep


def resolve_net(label, options, dataset=None, weights=None):
    """The net ``label`` (``NAME[@VARIANT]``) under ``options``; weights: a caffemodel or None.

    dataset: when given, the net must predict its classes.
    """
    rm = resolve_model(options.replace(model=label, weights=weights, prototxt=None))
    if dataset is not None:
        check_classes(rm, dataset, options.dataset)
    return rm


def transfer_targets(source, targets, options):
    """[Target] of each target net: its white-box configurations plus ``"source"``."""
    src = transfer_source_fields(source, options)
    return [Target(t, make_configs(record_base(t, options), options, source=src))
            for t in targets]


def run_transfer(dataset, ids, source, targets, store, options, progress=True):
    """Craft on ``source``, evaluate on every target over ``ids`` (resuming).

    Returns {target name: summary rows}.
    """
    plan = transfer_targets(source, targets, options)
    sweep(dataset, ids, source, plan, store, options, progress=progress,
          desc="%s->" % source.name)
    return {t.model.name: summarize(store, t.configs, ids, with_source=True) for t in plan}
