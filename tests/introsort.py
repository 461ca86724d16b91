"""numpy's scalar argsort (npysort aquicksort_, the order numpy used before SIMD sorts).

Re-expressed in Python from numpy/_core/src/npysort/quicksort.cpp for the tests:
median-of-three partitions while more than 16 items remain, then insertion
sort; the heapsort fallback never triggers below 2^8 items, so it is left out.
"""


def scalar_argsort(values):
    """Indices that sort `values` (a short sequence) in numpy's scalar introsort order."""
    n = len(values)
    if n > 256:
        raise ValueError("for short sequences only (no heapsort fallback here)")
    idx = list(range(n))
    v = values
    stack = []
    lo, hi = 0, n - 1
    while True:
        while hi - lo > 15:
            mid = lo + ((hi - lo) >> 1)
            if v[idx[mid]] < v[idx[lo]]:
                idx[mid], idx[lo] = idx[lo], idx[mid]
            if v[idx[hi]] < v[idx[mid]]:
                idx[hi], idx[mid] = idx[mid], idx[hi]
            if v[idx[mid]] < v[idx[lo]]:
                idx[mid], idx[lo] = idx[lo], idx[mid]
            pivot = v[idx[mid]]
            i, j = lo, hi - 1
            idx[mid], idx[j] = idx[j], idx[mid]
            while True:
                i += 1
                while v[idx[i]] < pivot:
                    i += 1
                j -= 1
                while pivot < v[idx[j]]:
                    j -= 1
                if i >= j:
                    break
                idx[i], idx[j] = idx[j], idx[i]
            idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
            if i - lo < hi - i:       # the larger part waits on the stack
                stack.append((i + 1, hi))
                hi = i - 1
            else:
                stack.append((lo, i - 1))
                lo = i + 1
        for i in range(lo + 1, hi + 1):
            item = idx[i]
            j = i
            while j > lo and v[item] < v[idx[j - 1]]:
                idx[j] = idx[j - 1]
                j -= 1
            idx[j] = item
        if not stack:
            return idx
        lo, hi = stack.pop()
