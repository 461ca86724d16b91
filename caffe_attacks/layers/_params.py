"""JSON ``param_str`` parsing shared by the Python layers (never eval).

The original layers read protobuf messages, where a field can be *absent*
(``has_*()`` false) or present; several layers (Interp, Upsample) branch on
presence, so the parser returns only the keys that were given and each layer
applies its own defaults.
"""
import json
import numbers

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true/false"}


def parse_param_str(param_str, allowed, layer_type):
    """The keys present in a layer's JSON ``param_str``, type-checked.

    Parameters
    ----------
    param_str : str, JSON object text; empty or whitespace means no keys
    allowed : dict mapping key -> int | float | bool, the accepted keys and types
    layer_type : str, for error messages (e.g. "Interp")

    Returns
    -------
    dict of the present keys; ints for int keys, floats for float keys

    Raises
    ------
    ValueError on malformed JSON, a non-object, an unknown key, or a wrong type
    """
    text = (param_str or "").strip()
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError("%s param_str is not valid JSON (%s): %r" % (layer_type, err, param_str)) from err
    if not isinstance(raw, dict):
        raise ValueError("%s param_str must be a JSON object, got %r" % (layer_type, param_str))
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError("%s param_str has unknown key(s) %s; accepted: %s"
                         % (layer_type, ", ".join(unknown), ", ".join(sorted(allowed)) or "(none)"))
    return {key: _checked(key, value, allowed[key], layer_type) for key, value in raw.items()}


def _checked(key, value, kind, layer_type):
    # bool is a subclass of int in Python, so test it explicitly both ways.
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ValueError("%s param_str key %r must be %s, got %r"
                         % (layer_type, key, _TYPE_NAMES[kind], value))
    return kind(value)
