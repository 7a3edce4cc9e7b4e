"""`s2ingest rechunk` holds at most --max-mem of values (plus a stated overhead), whatever the
number of threads, and its copy equals a plain xarray/dask rechunk. Memory is measured in a
child process (its peak resident set, against a generous bound); nothing here is timed."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import xarray as xr

from conftest import GROUP, cli_env

CHILD = """
import json, sys
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
import ingest.copies.rechunk, ingest.copies.chunkcopy, xarray, zarr, dask.array  # the libraries
from ingest.copies.rechunk import rechunk
before = rss('VmRSS')
rechunk(sys.argv[1], sys.argv[2], chunks='time=-1,y=125,x=100', max_mem=int(sys.argv[3]),
        threads=int(sys.argv[4]))
print(json.dumps({'before': before, 'peak': rss('VmHWM')}))
"""
OVERHEAD = 300 * 2**20  # Zarr's chunks in flight, xarray's metadata, allocator slack (README)


def test_peak_memory_stays_within_max_mem_whatever_the_threads(synced_cube, tmp_path):
    max_mem = 16 * 2**20
    src = xr.open_zarr(synced_cube, group=GROUP, consolidated=True, mask_and_scale=False)
    for threads in (1, 8):
        dst = tmp_path / f"t{threads}.zarr"
        r = subprocess.run([sys.executable, "-c", CHILD, str(synced_cube), str(dst), str(max_mem),
                            str(threads)], env=cli_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout.strip().splitlines()[-1])
        # the peak counts the libraries loaded before (VmHWM >= VmRSS then): only the growth
        assert m["peak"] - m["before"] <= max_mem + OVERHEAD, m
    # the copy (8 threads) equals dask's rechunk of the same values, chunks as asked
    out = xr.open_zarr(dst, group=GROUP, consolidated=True, mask_and_scale=False)
    ref = src.chunk({"time": -1, "y": 125, "x": 100})
    nbytes = 0
    for name in src.data_vars:
        assert out[name].encoding["chunks"] == (src.sizes["time"], 125, 100)
        # where the data is (the stored chunks' rows and columns), compared value for value
        keys = [k.name for k in (synced_cube / GROUP / name).iterdir() if k.name[0].isdigit()]
        rows = sorted({int(k.split(".")[1]) for k in keys})
        cols = sorted({int(k.split(".")[2]) for k in keys})
        sel = {"y": slice(rows[0] * 625, (rows[-1] + 1) * 625), "x": slice(cols[0] * 500, (cols[-1] + 1) * 500)}
        a, b = out[name].isel(sel).values, ref[name].isel(sel).values
        np.testing.assert_array_equal(a, b)
        nbytes += b.nbytes
    assert nbytes > max_mem + 0  # the copy holds more values than one --max-mem
