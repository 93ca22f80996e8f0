#!/usr/bin/env python3
"""Regenerates tests/fixtures/tarfile_{pax,gnu,ustar}.tar and their .names files: tars written by
CPython's tarfile with long, prefixed and non-ASCII names, and the member names tarfile reads
back (getnames(), one per line, plus the size), which TarArchive must reproduce.

Usage: python3 gen.py ../fixtures
"""
import io
import os
import sys
import tarfile

out = sys.argv[1]
names = [
    "sys_info",
    "pickle",
    "dir/" + "long_component_" * 8 + "storages",
    "caf\u00e9/tensors",
    "a/b/" + "x" * 120,
]
for label, fmt in (("pax", tarfile.PAX_FORMAT), ("gnu", tarfile.GNU_FORMAT), ("ustar", tarfile.USTAR_FORMAT)):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for i, name in enumerate(names):
            if fmt == tarfile.USTAR_FORMAT and len(name.encode()) > 100 and "/" not in name[-100:]:
                continue
            data = bytes([i]) * (100 * i + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with open(os.path.join(out, f"tarfile_{label}.tar"), "wb") as f:
        f.write(raw)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", format=tarfile.PAX_FORMAT) as t:
        lines = [f"{m.name}\t{m.size}" for m in t.getmembers()]
    with open(os.path.join(out, f"tarfile_{label}.names"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
