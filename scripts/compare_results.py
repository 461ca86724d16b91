"""Compare two results folders: store records (timing dropped) and rendered tables, byte for byte.

    python scripts/compare_results.py BEFORE AFTER

BEFORE and AFTER each hold a store.h5 (as results/demo/ after `make demo`)
and rendered tables (*.md, *.csv, *.tex, here and under tables/). Exit 0
when every record and every table is identical, 1 otherwise (the
differences are listed). Used to check that a refactoring changed no result.
"""
import json
import sys
from pathlib import Path

import numpy as np

from caffe_attacks.store import ResultsStore

TIMING = ("seconds",)
TABLE_SUFFIXES = (".md", ".csv", ".tex")


def records(store_path):
    """{(config key, image id): record without timing fields} of a store."""
    out = {}
    with ResultsStore(str(store_path), readonly=True) as store:
        for key in store.configs():
            for r in store.records(key):
                out[(key, r["id"])] = {k: (np.asarray(v).tolist() if hasattr(v, "shape") else v)
                                       for k, v in r.items() if k not in TIMING}
    return out


def tables(folder):
    """{relative path: bytes} of the rendered tables in a results folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.suffix in TABLE_SUFFIXES and p.is_file()}


def compare(before, after):
    """Differences as sentences (empty: identical)."""
    problems = []
    a, b = records(Path(before) / "store.h5"), records(Path(after) / "store.h5")
    for k in sorted(set(a) ^ set(b)):
        problems.append("record %s only in %s" % (k, before if k in a else after))
    for k in sorted(set(a) & set(b)):
        if json.dumps(a[k], sort_keys=True, default=str) != \
                json.dumps(b[k], sort_keys=True, default=str):
            problems.append("record %s differs" % (k,))
    ta, tb = tables(before), tables(after)
    for name in sorted(set(ta) | set(tb)):
        if ta.get(name) != tb.get(name):
            problems.append("table %s differs" % name if name in ta and name in tb
                            else "table %s only in %s" % (name, before if name in ta else after))
    print("%d records, %d tables compared" % (len(a), len(ta)))
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = compare(*argv)
    for p in problems:
        print(p)
    print("identical" if not problems else "%d difference(s)" % len(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
