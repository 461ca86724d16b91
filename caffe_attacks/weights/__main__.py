"""``python -m caffe_attacks.weights verify|fetch`` (``make verify-weights``/``fetch-weights``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from caffe_attacks import weights
from caffe_attacks.cli import run_cli
from caffe_attacks.weights.checksum import Status


def _table(rows, headers) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_verify(args) -> int:
    manifest = weights.load_manifest(args.manifest)
    results = weights.verify_dir(args.dir, args.names, manifest,
                                 progress=not args.json and sys.stderr.isatty())
    if args.json:
        json.dump([r.to_dict() for r in results], sys.stdout, indent=2)
        print()
    else:
        rows = [[r.name, r.status.value, r.md5 or "-", r.detail or r.path] for r in results]
        print(_table(rows, ["model", "status", "md5", "note"]))
        counts = {s: sum(r.status is s for r in results) for s in Status}
        print("\n" + ", ".join("%d %s" % (n, s.value) for s, n in counts.items() if n))
    for r in results:
        if r.unreadable:
            print("error: %s: %s" % (r.name, r.detail), file=sys.stderr)
    bad = [r.name for r in results if r.mismatch]
    if bad:
        print("MISMATCH: %s" % ", ".join(bad), file=sys.stderr)
    if any(r.unreadable for r in results):
        return 2
    return 1 if bad else 0


def cmd_fetch(args) -> int:
    manifest = weights.load_manifest(args.manifest)
    names = args.names or weights.fetchable_names(manifest)
    failed, done_files = [], {}
    for name in names:
        entry = weights.model_entry(name, manifest)
        target = str(weights.weights_file(entry, args.dir))
        if target in done_files:   # frontend and context share one file
            print("%s: same file as %s" % (name, done_files[target]))
            continue
        try:
            result = weights.fetch(name, args.dir, manifest, attempts=args.attempts,
                                   timeout=args.timeout, progress=sys.stderr.isatty())
        except weights.FetchError as err:
            print("FAILED %s" % err, file=sys.stderr)
            failed.append(name)
            continue
        done_files[target] = name
        print("%s: %s, %s (md5 %s) -> %s" % (name, result.action, result.status.value,
                                             result.md5 or "-", result.path))
    if failed:
        print("\n%d of %d failed: %s" % (len(failed), len(names), ", ".join(failed)),
              file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caffe_attacks.weights",
                                     description="Verify and download the zoo's caffemodels.")
    parser.add_argument("--manifest", default=None,
                        help="manifest JSON (default: weights_manifest.json of the repo)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="md5 of every caffemodel in DIR against the manifest")
    verify.add_argument("--dir", default="weights")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("names", nargs="*", help="models to check (default: all)")
    verify.set_defaults(func=cmd_verify)
    fetch = sub.add_parser("fetch", help="download public caffemodels into DIR")
    fetch.add_argument("--dir", default="weights")
    fetch.add_argument("--attempts", type=int, default=3,
                       help="tries per URL; each resumes where the last stopped")
    fetch.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    fetch.add_argument("names", nargs="*", help="models (default: every one with a public URL)")
    fetch.set_defaults(func=cmd_fetch)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    hint = ("what arrived is kept as <file>.part in %s; run the same command to resume"
            % args.dir) if args.command == "fetch" else "run the same command again"
    return run_cli(lambda: args.func(args), resume_hint=hint)


if __name__ == "__main__":
    sys.exit(main())
