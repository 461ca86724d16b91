"""Compare a generated definition with an original deploy, layer by layer.

Used by the tests: for the published caffemodels to load (by layer name and
blob shape) and to compute what the original computed, the generated net must
have the original's layers in the same order, with the same types (each
fork-specific type mapped to our Python layer), parameter blob shapes and
top blob shapes at the original's input size.
"""
from caffe_attacks.caffe_geometry import net_inputs, parse_prototxt
from caffe_attacks.zoo import shapes

# original (fork) layer type -> types our generators use for it
TYPE_MAP = {
    "Interp": {"Python:caffe_attacks.layers.interp.Interp"},
    "BN": {"Python:caffe_attacks.layers.bn.PSPBN", "Python:caffe_attacks.layers.bn.ScaleShiftBN"},
    "Upsample": {"Python:caffe_attacks.layers.upsample.Upsample"},
    "MultiStageMeanfield": {"Python:caffe_attacks.layers.meanfield.MultiStageMeanfield"},
}


def _type_ok(ref_type, gen_type):
    return gen_type == ref_type or gen_type in TYPE_MAP.get(ref_type, ())


def compare(generated, reference, ignore_ref_types=("SoftmaxWithLoss",),
            stop_after=None, extra_generated=(), check_blob_names=True, bn_blobs=None):
    """Differences between a generated and a reference definition.

    Parameters
    ----------
    generated, reference : str
        Prototxt texts. Shapes are inferred for both at the reference's input
        size (the generated input blobs are overridden to it).
    ignore_ref_types : tuple of str
        Reference layers to drop (training-only loss layers).
    stop_after : str, optional
        Truncate both nets after this layer (e.g. front end of a context net).
    extra_generated : sequence of str
        Names of layers the generated net may add at its end (after the
        reference's last layer), e.g. a final ``Interp``.
    check_blob_names : bool
        Also compare top and bottom blob names.
    bn_blobs : int, optional
        Blob count of the reference's fork ``BN`` type (see shapes.infer).

    Returns
    -------
    list of str
        Human-readable differences; empty when the nets conform.
    """
    ref_net = parse_prototxt(reference)
    gen_net = parse_prototxt(generated)
    ref_inputs = net_inputs(ref_net)
    ref = [l for l in shapes.infer(ref_net, bn_blobs=bn_blobs)
           if l.type != "Input" and l.type not in ignore_ref_types]
    ref_inputs.update({t: s for l in shapes.infer(ref_net, bn_blobs=bn_blobs)
                       if l.type == "Input" for t, s in zip(l.tops, l.top_shapes)})
    gen_all = shapes.infer(gen_net, input_shapes=ref_inputs)
    gen = [l for l in gen_all if l.type != "Input"]
    diffs = []
    gen_inputs = {t: s for l in gen_all if l.type == "Input" for t, s in zip(l.tops, l.top_shapes)}
    gen_inputs.update(net_inputs(gen_net))
    for blob, shape in ref_inputs.items():
        if blob in gen_inputs and gen_inputs[blob] != shape:
            diffs.append("input %s: %s vs reference %s" % (blob, gen_inputs[blob], shape))
    if stop_after is not None:
        ref = ref[:[l.name for l in ref].index(stop_after) + 1]
        cut = [l.name for l in gen].index(stop_after) + 1
        gen, tail = gen[:cut], gen[cut:]
    else:
        tail = gen[len(ref):]
        gen = gen[:len(ref)]
    if [l.name for l in tail] != list(extra_generated):
        diffs.append("extra generated layers %s, expected %s"
                     % ([l.name for l in tail], list(extra_generated)))
    if [l.name for l in gen] != [l.name for l in ref]:
        diffs.append("layer names differ:\n  ours %s\n  ref  %s"
                     % ([l.name for l in gen], [l.name for l in ref]))
        return diffs
    for g, r in zip(gen, ref):
        if not _type_ok(r.type, g.type):
            diffs.append("%s: type %s vs reference %s" % (g.name, g.type, r.type))
        if g.param_shapes != r.param_shapes:
            diffs.append("%s: params %s vs reference %s" % (g.name, g.param_shapes, r.param_shapes))
        if g.top_shapes != r.top_shapes:
            diffs.append("%s: tops %s vs reference %s" % (g.name, g.top_shapes, r.top_shapes))
        if check_blob_names and (g.tops != r.tops or g.bottoms != r.bottoms):
            diffs.append("%s: blobs %s -> %s vs reference %s -> %s"
                         % (g.name, g.bottoms, g.tops, r.bottoms, r.tops))
    return diffs
