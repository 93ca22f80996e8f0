#!/usr/bin/env python3
"""Regenerates tests/fixtures/miniz_locate.tsv: which central index miniz 3.0.2's
mz_zip_reader_locate_file(zip, name, NULL, 0) (what PyTorch's getRecordID calls) returns
for archives with duplicate and case-duplicate names.

Usage: build ./locate from locate.c against miniz 3.0.2 (github.com/richgel999/miniz, tag
3.0.2: gcc -O1 -o locate locate.c miniz.c miniz_tdef.c miniz_tinfl.c miniz_zip.c), then
    python3 gen.py ./locate > ../fixtures/miniz_locate.tsv
Each line: names joined by '|', a tab, the query, a tab, the index (-1: not found).
"""
import os
import random
import subprocess
import sys
import tempfile
import warnings
import zipfile

warnings.simplefilter("ignore")
locate = sys.argv[1]
rng = random.Random(20261201)
pool = ["a/data.pkl", "a/DATA.pkl", "a/Data.PKL", "a/version", "a/x", "a/X", "a/data", "a/data.pklx", "b/y"]
cases = []
for _ in range(120):
    names = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
    queries = sorted(set(rng.choice(pool) for _ in range(3)))
    cases.append((names, queries))
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "t.zip")
    for names, queries in cases:
        with zipfile.ZipFile(path, "w") as z:
            for i, n in enumerate(names):
                z.writestr(n, bytes([i]))
        out = subprocess.run([locate, path, *queries], capture_output=True, text=True, check=True)
        for q, idx in zip(queries, out.stdout.split()):
            print(f"{'|'.join(names)}\t{q}\t{idx}")
