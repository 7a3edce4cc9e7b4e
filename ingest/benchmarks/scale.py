"""National scale: bookkeeping that costs what a commit changes, not what the cube holds.

    python -m ingest.benchmarks.scale --out bench-results/scale.json            # 10k,100k,1M,4M
    python -m ingest.benchmarks.scale --sizes 10000,100000 --out /tmp/scale.json

For each size a simulated national cube (``build_cube``: 20 variables of ``(time, y, x)``,
500 spatial chunks per time chunk, tiny payloads; its bookkeeping is built directly by the
bulk builder, not by millions of commits; only the chunks the measurements read or rewrite
are written as files) gets one real one-date append through ``Transaction`` (in a child
process: commit seconds, the part spent on bookkeeping, peak RSS, bookkeeping bytes written).
Then, over a local HTTP server: a pinned ``open_cube(version=V)`` (bookkeeping bytes fetched)
and one pixel at one date, and the pixel's whole series; and ``verify --deep``'s peak RSS (a
child; the simulated keys that have no file are reported missing and counted, not kept).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

N_VARS = 20
NY, NX = 25, 20  # spatial chunks per time chunk (500)
CH = (5, 2, 2)
GOALS = {"commit_bookkeeping_s": 1.0, "commit_bookkeeping_bytes": 2e6, "rss_over_smallest_mb": 100,
         "pinned_open_bytes": 1e6, "verify_deep_rss_mb": 500}


def _vars() -> list[str]:
    return [f"V{i:02d}" for i in range(N_VARS)]


def build_cube(path: Path, n_keys: int) -> dict:
    """A cube of about ``n_keys`` chunk keys at version 2 (version 1: the arrays, made by a
    real commit; version 2: every chunk key, bookkeeping built in bulk)."""
    from ingest.grid import CubeGrid
    from ingest.store import COMPRESSOR, CubeStore
    from ingest.store.bookkeeping import build
    from ingest.store.bookkeeping.codec import ROOT_ATTR, root_key, sha
    from ingest.store.layout import VERSION_ATTR
    from ingest.store.zarrdocs import ArrayMeta, dumps

    t_chunks = max(1, round(n_keys / (N_VARS * NY * NX)))
    nt = CH[0] * (t_chunks - 1) + 2  # the last time chunk holds two steps
    grid = CubeGrid("bench", "EPSG:28992", 10, (0, 0, NX * CH[2] * 10, NY * CH[1] * 10))
    store = CubeStore.for_writing(path, grid)
    dims = {"_ARRAY_DIMENSIONS": ["time", "y", "x"]}
    with store.transaction() as tx:
        tx.create_group("S2")
        tx.create_group("S2/R051")
        tx.create_array("S2/R051/time", shape=(nt,), chunks=(64,), dtype="i8", fill_value=-1,
                        compressor=COMPRESSOR, data=np.arange(nt, dtype="i8") * 86_400_000 + 1_600_000_000_000,
                        attrs={"_ARRAY_DIMENSIONS": ["time"], "units": "milliseconds since 1970-01-01T00:00:00",
                               "calendar": "proleptic_gregorian"})
        tx.create_array("S2/R051/y", shape=(NY * CH[1],), chunks=(NY * CH[1],), dtype="f8", fill_value=None,
                        compressor=None, attrs={"_ARRAY_DIMENSIONS": ["y"]},
                        data=np.arange(NY * CH[1], dtype="f8")[::-1] * 10 + 5)
        tx.create_array("S2/R051/x", shape=(NX * CH[2],), chunks=(NX * CH[2],), dtype="f8", fill_value=None,
                        compressor=None, attrs={"_ARRAY_DIMENSIONS": ["x"]},
                        data=np.arange(NX * CH[2], dtype="f8") * 10 + 5)
        for v in _vars():
            tx.create_array(f"S2/R051/{v}", shape=(nt, NY * CH[1], NX * CH[2]), chunks=CH, dtype="u2",
                            fill_value=0, compressor=COMPRESSOR, attrs=dims)
        tx.commit()
    backend = store.backend
    v1 = store.index(1)
    meta = ArrayMeta.parse(backend.get("S2/R051/V00/.zarray"), "bench")
    rng = np.random.default_rng(0)
    records = dict(v1.items())
    shas = rng.bytes(32 * N_VARS * t_chunks * NY * NX)
    sizes = rng.integers(40, 400, N_VARS * t_chunks * NY * NX)
    k = 0
    for v in _vars():
        for t in range(t_chunks):
            real_t = t == t_chunks - 1
            for j in range(NY):
                for i in range(NX):
                    key = f"S2/R051/{v}/{t}.{j}.{i}"
                    if real_t or (j == 0 and i == 0 and v == "V00"):  # written: read or rewritten
                        steps = 2 if real_t else CH[0]
                        block = np.zeros(CH, "u2")
                        block[:steps] = 1 + (t + j + i) % 1000
                        raw = meta.encode(block)
                        backend.put(key, raw)
                        records[key] = (len(raw), sha(raw))
                    else:
                        records[key] = (int(sizes[k]), shas[32 * k: 32 * k + 32].hex())
                    k += 1
    draft = build.bulk(records.items())
    root_raw, _ = build.finish(draft, version=2, parent=1, parent_root=v1.root_sha,
                               snapshot=v1.snapshot(), changes={}, kept=[])
    for key, raw in draft.objects.items():
        backend.put(key, raw)
    backend.put(root_key(2), root_raw)
    zmeta = json.loads(backend.get(".zmetadata"))
    attrs = zmeta["metadata"][".zattrs"] | {VERSION_ATTR: 2, ROOT_ATTR: sha(root_raw)}
    zmeta["metadata"][".zattrs"] = attrs
    backend.put(".zattrs", dumps(attrs))
    backend.put(".zmetadata", dumps(zmeta))
    return {"keys": len(records), "time_chunks": t_chunks, "steps": nt}


def _bookkeeping_bytes(path: Path) -> int:
    total = 0
    for sub in ("pieces", "lists", "meta", "roots"):
        d = path / ".s2ingest" / sub
        if d.is_dir():
            total += sum(e.stat().st_size for e in os.scandir(d))
    return total


def child_commit(path: Path) -> dict:
    """One date appended through a real ``Transaction`` (run in a child process)."""
    import ingest.store.transaction as txm
    import ingest.store.versions as vm
    from ingest.benchmarks.common import _peak_mb
    from ingest.store import CubeStore
    from ingest.store.layout import join

    spent = {"s": 0.0}
    real = txm.commit_bookkeeping

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent["s"] += time.perf_counter() - t0

    txm.commit_bookkeeping = timed
    keep = {"s": 0.0}
    real_keep = vm.keep_old_bytes

    def timed_keep(*a, **k):  # copying the old chunk bytes is data, not bookkeeping
        t0 = time.perf_counter()
        try:
            return real_keep(*a, **k)
        finally:
            keep["s"] += time.perf_counter() - t0

    vm.keep_old_bytes = timed_keep
    before = _bookkeeping_bytes(path)
    base_rss = _peak_mb()
    store = CubeStore.open(path)
    t0 = time.perf_counter()
    with store.transaction() as tx:
        meta = tx.array("S2/R051/V00")
        nt = meta.shape[0]
        t = nt // CH[0]
        for v in _vars():
            m = tx.resize(f"S2/R051/{v}", (nt + 1, *meta.shape[1:]))
            for j in range(NY):
                for i in range(NX):
                    block = np.zeros(CH, "u2")
                    block[: nt % CH[0] + 1] = 1 + (t + j + i) % 1000
                    tx.put(join(f"S2/R051/{v}", f"{t}.{j}.{i}"), m.encode(block))
        tm = tx.resize("S2/R051/time", (nt + 1,))
        c = nt // 64
        vals = np.full(64, -1, "i8")
        n = min(64, nt + 1 - 64 * c)
        vals[:n] = (np.arange(64 * c, 64 * c + n) * 86_400_000 + 1_600_000_000_000)
        tx.put(f"S2/R051/time/{c}", tm.encode(vals))
        report = tx.commit()
    seconds = time.perf_counter() - t0
    return {"version": report.version, "commit_s": seconds, "commit_bookkeeping_s": spent["s"] - keep["s"],
            "keep_old_bytes_s": keep["s"],
            "commit_bookkeeping_bytes": _bookkeeping_bytes(path) - before,
            "peak_rss_mb": _peak_mb(), "rss_before_mb": base_rss, "chunks_written": len(report.changes)}


def child_verify(path: Path) -> dict:
    from ingest.benchmarks.common import _peak_mb
    from ingest.store import CubeStore
    from ingest.store.verify import check_manifest

    t0 = time.perf_counter()
    problems = {"missing": 0, "other": 0, "examples": []}
    for p in check_manifest(CubeStore.open(path), deep=True):
        kind = "missing" if p.endswith(")") and "missing (version" in p else "other"
        problems[kind] += 1
        if kind == "other" and len(problems["examples"]) < 5:
            problems["examples"].append(p)
    return {"verify_deep_s": time.perf_counter() - t0, "verify_deep_rss_mb": _peak_mb(), **problems}


def pinned(path: Path, version: int) -> dict:
    import s2ingest
    from ingest.store.bookkeeping.index import VersionIndex
    from ingest.testing.httpserve import serve

    fetched = {"n": 0}
    real_fetch, real_load = VersionIndex.fetch, VersionIndex.load.__func__

    def fetch(self, key, h):
        raw = real_fetch(self, key, h)
        fetched["n"] += len(raw)
        return raw

    def load(cls, get, version, **kw):
        def counted(key):
            raw = get(key)
            fetched["n"] += len(raw or b"")
            return raw
        idx = real_load(cls, counted, version, **kw)
        if idx is not None:
            idx.get = get
        return idx

    VersionIndex.fetch, VersionIndex.load = fetch, classmethod(load)
    with serve(path.parent) as server:
        url = f"{server.url}/{path.name}"
        t0 = time.perf_counter()
        ds = s2ingest.open_cube(url, version=version)
        opened = time.perf_counter() - t0
        open_bytes = fetched["n"]
        server.reset()
        t0 = time.perf_counter()
        one = ds.V00.isel(time=0, y=0, x=0).values
        one_s = time.perf_counter() - t0
        one_bytes = server.served_bytes
        one_bookkeeping = fetched["n"] - open_bytes
        server.reset()
        t0 = time.perf_counter()
        series = ds.V00.isel(y=0, x=0).values
        series_s = time.perf_counter() - t0
        series_bytes = server.served_bytes
        series_bookkeeping = fetched["n"] - open_bytes - one_bookkeeping
    VersionIndex.fetch, VersionIndex.load = real_fetch, classmethod(real_load)
    return {"one_pixel_bookkeeping_bytes": one_bookkeeping, "series_bookkeeping_bytes": series_bookkeeping,"pinned_open_bytes": open_bytes, "pinned_open_s": opened, "one_pixel_s": one_s,
            "one_pixel_served_bytes": one_bytes, "series_s": series_s, "series_served_bytes": series_bytes,
            "series_len": int(series.size), "one_value": int(one)}


def run_size(n: int, work: Path) -> dict:
    path = work / f"cube-{n}.zarr"
    if path.exists():
        import shutil

        shutil.rmtree(path)
    t0 = time.perf_counter()
    out = _child(["--build", str(path), str(n)])
    out["build_s"] = time.perf_counter() - t0
    out.update(_child(["--commit", str(path)]))
    out.update(pinned(path, 2))
    out.update(_child(["--verify", str(path)]))
    return out


def _child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-m", "ingest.benchmarks.scale", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"child {args} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,4000000")
    ap.add_argument("--work", type=Path, default=Path("bench-results/scale"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/scale.json"))
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--commit", help=argparse.SUPPRESS)
    ap.add_argument("--verify", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        print(json.dumps(build_cube(Path(args.build[0]), int(args.build[1]))))
        return {}
    if args.commit:
        print(json.dumps(child_commit(Path(args.commit))))
        return {}
    if args.verify:
        print(json.dumps(child_verify(Path(args.verify))))
        return {}
    from ingest.benchmarks.common import git_info, machine_info

    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        print(f"SCALE {n} keys ...", flush=True)
        results[n] = run_size(n, args.work)
        r = results[n]
        print(f"  {r['keys']} keys: commit {r['commit_s']:.2f} s (bookkeeping {r['commit_bookkeeping_s']:.3f} s, "
              f"{r['commit_bookkeeping_bytes'] / 1e3:.0f} kB written), peak RSS {r['peak_rss_mb']:.0f} MB; "
              f"pinned open {r['pinned_open_bytes'] / 1e3:.0f} kB bookkeeping; one pixel "
              f"{r['one_pixel_served_bytes'] / 1e3:.0f} kB in {r['one_pixel_s']:.2f} s; series of "
              f"{r['series_len']} {r['series_served_bytes'] / 1e6:.1f} MB in {r['series_s']:.2f} s; "
              f"verify --deep {r['verify_deep_rss_mb']:.0f} MB peak", flush=True)
    small, big = results[sizes[0]], results[sizes[-1]]
    summary = {
        "largest": sizes[-1], "commit_bookkeeping_s": big["commit_bookkeeping_s"],
        "commit_bookkeeping_bytes": big["commit_bookkeeping_bytes"],
        "rss_over_smallest_mb": big["peak_rss_mb"] - small["peak_rss_mb"],
        "pinned_open_bytes": big["pinned_open_bytes"], "verify_deep_rss_mb": big["verify_deep_rss_mb"],
        "commit_bookkeeping_bytes_ratio_largest_to_smallest":
            big["commit_bookkeeping_bytes"] / max(1, small["commit_bookkeeping_bytes"]),
        "goals": GOALS,
    }
    summary["goals_met"] = {k: summary[k] <= g for k, g in GOALS.items()}
    report = {"schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "code": git_info(), "loadavg": os.getloadavg(),
              "config": {"sizes": sizes, "vars": N_VARS, "spatial_chunks": NY * NX, "chunks": CH},
              "results": results, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()
