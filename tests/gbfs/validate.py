#!/usr/bin/env python3
"""Validate a running GBFS feed against the official GBFS JSON schemas.

Uses the `gbfs-validator` package from PyPI (MIT; it ships MobilityData's gbfs-json-schema,
Apache-2.0, verbatim, and the cross-file checks of MobilityData's validator). Install it with

    python3 -m pip install gbfs-validator==0.1.0

Usage: validate.py URL_OF_GBFS_JSON. Prints one JSON object: for every file the validator
looked at, whether it exists, whether it was required and its errors; exits 0 when there is no
error at all, 1 otherwise, 2 when the package is missing.
"""

import json
import sys

try:
    from gbfs_validator.feed import GBFS
except ImportError:
    print("the gbfs-validator package is missing: python3 -m pip install gbfs-validator==0.1.0",
          file=sys.stderr)
    sys.exit(2)


def errors_of(entry):
    out = []
    for e in entry.get("errors") or []:
        out.append({k: e.get(k) for k in ("instancePath", "schemaPath", "message") if k in e})
    for lang in entry.get("languages") or []:
        out.extend(errors_of(lang))
    return out


def main():
    report = GBFS(sys.argv[1], freefloating=True).validation()
    summary = report.get("summary", {})
    files = {}
    for entry in report.get("files", []):
        files[entry.get("file")] = {
            "exists": bool(entry.get("exists")),
            "required": bool(entry.get("required")),
            "errors": errors_of(entry),
        }
    print(json.dumps({
        "version": summary.get("version"),
        "has_errors": bool(summary.get("hasErrors")),
        "files": files,
    }, indent=1, default=str))
    sys.exit(1 if summary.get("hasErrors") else 0)


if __name__ == "__main__":
    main()
