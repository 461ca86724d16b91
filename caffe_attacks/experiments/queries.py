"""Queries on the results store: which stored configuration answers a cell.

A query is a dict of configuration fields (experiments.definitions builds
them from a definition); :func:`find_config` finds the stored configuration
answering it.
"""
import functools
import logging
import math

from caffe_attacks.runner import RunOptions
from caffe_attacks.runner.registry import names as attack_names
from caffe_attacks.runner.registry import record_options

log = logging.getLogger(__name__)


def default_options(attack, **overrides):
    """The runner's record options for an attack with its default arguments (and overrides).

    overrides: RunOptions fields, e.g. ``alpha=0.5``.
    """
    if not overrides:
        return dict(_defaults(attack))
    return record_options(RunOptions(**overrides), attack)


@functools.lru_cache(maxsize=None)
def _defaults(attack):
    return tuple(record_options(RunOptions(), attack).items())


def _values_match(have, want):
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            _values_match(have.get(k), v) for k, v in want.items())
    if isinstance(want, (int, float)) and isinstance(have, (int, float)) \
            and not isinstance(want, bool):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return have == want


def config_matches(config, query):
    """Whether a stored configuration answers a query.

    Every query field must be present and equal (numbers up to round-off);
    dict fields (options, a CRF variant) match as subsets. An attack's
    options default to the runner's defaults, so a paper cell never picks up
    a run with a non-paper alpha or target. Fields the query omits are free,
    except 'engine' (caffe unless asked) and fields that mark a derived run
    (a transfer 'source', a 'variant'), which must be absent unless asked.
    """
    q = dict(query)
    q.setdefault("engine", "caffe")
    attack = q.get("attack")
    if attack in attack_names():
        q["options"] = dict(default_options(attack), **q.get("options", {}))
    for marker in ("source", "variant", "crf"):
        if marker not in q and config.get(marker) is not None:
            return False
    # a CRF variant is all its overrides: {theta_alpha: 1} is not {theta_alpha: 1, w2: 5}
    if isinstance(q.get("crf"), dict) and set(config.get("crf") or {}) != set(q["crf"]):
        return False
    return all(_values_match(config.get(k), v) for k, v in q.items())


def find_config(store, query):
    """The key of the stored configuration answering `query` (most images wins), or None."""
    keys = [k for k, c in store.configs().items() if config_matches(c, query)]
    if not keys:
        return None
    if len(keys) > 1:
        log.info("%d stored configurations match %s; using the one with the most images",
                 len(keys), query)
    return max(keys, key=lambda k: (len(_ids_of(store, k)), k))


def _ids_of(store, key):
    s = store.summary(key)
    return set(s["ids"]) if s else set()
