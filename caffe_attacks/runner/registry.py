"""Attacks by name: the function that makes adversarial inputs and the options a record keeps.

Every attack function has the signature of :mod:`caffe_attacks.attacks`:
``fn(model, x, eps_list, **kwargs) -> [x_adv per eps]``. Its entry says which
run options change its result (they enter the record's configuration, hence
its key); the same keys, minus ``clip_to_image``, are the function's keyword
arguments. Adding an attack is one :func:`register` call.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from caffe_attacks import attacks
from caffe_attacks.errors import UsageError
from caffe_attacks.runner import strong


@dataclass(frozen=True)
class AttackEntry:
    """fn: the attack; record_options: RunOptions -> {option: value} for the record.

    cost: record options -> {"forward": n, "backward": n}, the passes per
    image the attack's schedule takes (the record's "passes"), or None.
    """
    name: str
    fn: Callable
    record_options: Callable
    cost: Optional[Callable] = None


REGISTRY = {}


def register(name, fn, record_options=lambda options: {}, cost=None):
    """Make ``name`` available to the runner (``--attack NAME``)."""
    REGISTRY[name] = AttackEntry(name, fn, record_options, cost)


def names():
    """Registered attack names, in registration order."""
    return tuple(REGISTRY)


def entry(name):
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError("unknown attack %r; choose from %s" % (name, ", ".join(REGISTRY))) \
            from None


def _iterative(options):
    opts = {"alpha": options.alpha}
    if options.batch_eps:
        # same results as the loop, but kept apart in the store: float
        # reductions in a batch may round differently on some engines
        opts["batch_eps"] = True
    return opts


register("fgsm", attacks.fgsm)
register("fgsm_ll", attacks.fgsm_ll)
register("ifgsm", attacks.ifgsm, _iterative)
register("ifgsm_ll", attacks.ifgsm_ll,
         lambda options: dict(_iterative(options), target=options.ifgsm_ll_target))
# Beyond the paper (issue 17): their records say their projection, labels and cost.
for _name in strong.PGD_ATTACKS:
    register(_name, strong.pgd_adapter(_name), strong.pgd_record_options(_name), strong.pgd_cost)
for _name in strong.APGD_ATTACKS:
    register(_name, strong.apgd_adapter(_name), strong.apgd_record_options(_name),
             strong.apgd_cost)
register("sea", strong.sea_fn, strong.sea_record_options)


def cost(attack, record_opts):
    """The record's "passes" for ``attack`` under its record options, or None."""
    fn = entry(attack).cost
    return None if fn is None else fn(record_opts)


def record_options(options, attack):
    """The options that change ``attack``'s result under RunOptions ``options``."""
    return dict({"clip_to_image": bool(options.clip_to_image)},
                **entry(attack).record_options(options))


def attack_kwargs(record_opts, box):
    """Keyword arguments of an attack function from a record's options.

    box: the source's :class:`~caffe_attacks.attacks.ImageBox`, used when the
    record's ``clip_to_image`` is set.
    """
    kwargs = {k: v for k, v in record_opts.items() if k != "clip_to_image"}
    kwargs["clip_to_image"] = box if record_opts.get("clip_to_image") else None
    return kwargs
