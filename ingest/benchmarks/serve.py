"""Overviews and server speed, on the demo data over the full NL grid, in one run:

    python -m ingest.benchmarks.serve --out bench-results/serve.json

* **publish cost of the overviews**: the last demo datatake (two tiles) ingested into a copy of
  a cube holding the other five, once without overviews and once with them (the publish hook
  recomputes the touched level chunks in the same commit), interleaved ``--repeat`` times;
  reported as (with - without) / without, plus the one-off ``s2ingest overviews`` build of the
  whole demo cube against the time the demo ingest took. The demo's small windows are the
  worst case for this ratio (each of the seven levels re-encodes at least a chunk per variable
  and step, however little changed); the figure held against the goal (< 10 %) is the one on a
  full tile, ``python -m ingest.benchmarks.ingest`` (``overviews_publish_overhead``);
* **tile latency** (median, p95) of ``--tiles`` true-colour tiles at a low zoom (9) and a high
  zoom (14) inside the data, with overviews and without (the server's read limit lifted for the
  measurement: without overviews a low-zoom tile reads every native pixel under it);
* **point time series latency** (all time steps, NDVI) at ``--points`` random points.

Server figures are in-process (FastAPI's TestClient: the server's work, no network).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

DEFAULT_DIR = Path("bench-results/serve")


def _p95(values: list[float]) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]


def _stats(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(_p95(values) * 1000, 1), "n": len(values)}


def _ingest(store: Path, paths: list[Path], resolve) -> float:
    from ingest.publish import engine
    from ingest.grid import NL_GRID
    from ingest.products.safe import read_product
    from ingest.warping.warp import parse_resampling

    cube = engine.Cube(store, NL_GRID, 51)
    t0, c0 = time.perf_counter(), time.process_time()
    engine.ingest_products(cube, [read_product(p) for p in paths], resolve, parse_resampling(None),
                           progress=False)
    return time.perf_counter() - t0, time.process_time() - c0


def _build_overviews(store: Path) -> float:
    from ingest.overviews import build_overviews
    from ingest.store import CubeStore

    s = CubeStore.open(store)
    t0 = time.perf_counter()
    with s.transaction() as tx:
        build_overviews(tx, s.grid, "S2/R051")
        tx.commit()
    return time.perf_counter() - t0


def publish_cost(root: Path, repeat: int, echo) -> dict:
    from ingest.demo import DEMO_DATATAKES, make_demo_products
    from ingest.products.safe import read_product

    products = make_demo_products(root / "products", echo=lambda *_: None)
    by_name = {p.name.removesuffix(".SAFE"): p for p in products}

    def resolve(name):
        return read_product(by_name[name])

    last = DEMO_DATATAKES[-1][0].strftime("%Y%m%dT")
    older = [p for p in products if last not in p.name]
    newest = [p for p in products if last in p.name]
    base = root / "base.zarr"
    if not base.exists():
        echo(f"building the base cube from {len(older)} products")
        t_base = _ingest(base, older, resolve)[0]
    else:
        t_base = None
    base_ov = root / "base-overviews.zarr"
    if not base_ov.exists():
        shutil.copytree(base, base_ov)
        t_build = _build_overviews(base_ov)
    else:
        t_build = None
    plain, with_ov = [], []
    for i in range(repeat):
        for src, out in ((base, plain), (base_ov, with_ov)):
            work = root / "work.zarr"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(src, work)
            out.append(_ingest(work, newest, resolve))
            shutil.rmtree(work)
        echo(f"  run {i + 1}: ingest {plain[-1][0]:.2f} s ({plain[-1][1]:.2f} s CPU) without overviews, "
             f"{with_ov[-1][0]:.2f} s ({with_ov[-1][1]:.2f} s CPU) with")
    # DESIGN CHOICE: the overhead is the median of the ratios of interleaved pairs, in wall
    # and in CPU time (all threads of this process): CPU time is what other processes on a
    # shared machine do not disturb
    wall = [(w[0] - p[0]) / p[0] for p, w in zip(plain, with_ov)]
    cpu = [(w[1] - p[1]) / p[1] for p, w in zip(plain, with_ov)]
    return {"ingest_without_overviews_s": round(statistics.median(p[0] for p in plain), 3),
            "ingest_with_overviews_s": round(statistics.median(w[0] for w in with_ov), 3),
            "ingest_without_overviews_cpu_s": round(statistics.median(p[1] for p in plain), 3),
            "ingest_with_overviews_cpu_s": round(statistics.median(w[1] for w in with_ov), 3),
            "overviews_publish_overhead": round(statistics.median(wall), 3),
            "overviews_publish_overhead_cpu": round(statistics.median(cpu), 3),
            "build_all_levels_s": None if t_build is None else round(t_build, 2),
            "base_ingest_s": None if t_base is None else round(t_base, 2),
            "products_in_last_publish": len(newest)}


def latency(store: Path, n_tiles: int, n_points: int, echo) -> dict:
    import morecantile
    from fastapi.testclient import TestClient

    from ingest.serve import create_app
    from ingest.serve import tiles as tiles_mod

    client = TestClient(create_app(str(store)))
    meta = client.get("/api/meta").json()
    g = meta["groups"]["S2/R051"]
    w, s, e, n = g["data_bounds_wgs84"]
    tms = morecantile.tms.get("WebMercatorQuad")
    rng = random.Random(0)
    out: dict = {"time_steps": len(g["times"]), "levels": g["levels"]}
    tiles_mod.MAX_TILE_PIXELS = 10 ** 9  # measure the cost without overviews too
    for z in (9, 14):
        tiles = {tms.tile(rng.uniform(w, e), rng.uniform(s, n), z) for _ in range(n_tiles * 4)}
        tiles = sorted(tiles, key=lambda t: (t.x, t.y))[:n_tiles]
        for overviews in (True, False):
            times, levels = [], set()
            for k, t in enumerate(tiles):
                url = (f"/tiles/{z}/{t.x}/{t.y}.png?composite=true_color&time={k % len(g['times'])}"
                       f"&overviews={str(overviews).lower()}")
                t0 = time.perf_counter()
                r = client.get(url)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                levels.add(int(r.headers["x-overview-level"]))
            key = f"tile_z{z}_{'with' if overviews else 'without'}_overviews"
            out[key] = {**_stats(times), "levels": sorted(levels)}
            echo(f"  {key}: median {out[key]['median_ms']} ms, p95 {out[key]['p95_ms']} ms")
    times = []
    for _ in range(n_points):
        lon, lat = rng.uniform(w, e), rng.uniform(s, n)
        t0 = time.perf_counter()
        client.get(f"/api/series?lon={lon}&lat={lat}&variable=NDVI").raise_for_status()
        times.append(time.perf_counter() - t0)
    out["point_series_ndvi"] = _stats(times)
    echo(f"  point series (NDVI, {len(g['times'])} steps): median {out['point_series_ndvi']['median_ms']} ms")
    return out


def _tile_urls(meta: dict, n: int, seed: int = 1) -> list[str]:
    """``n`` true-colour tile URLs at zooms 11-14 inside the data (with overviews: each from
    the level the server picks for its zoom), cycling over the dates."""
    import morecantile

    g = meta["groups"]["S2/R051"]
    w, s, e, no = g["data_bounds_wgs84"]
    tms = morecantile.tms.get("WebMercatorQuad")
    rng = random.Random(seed)
    urls = []
    for k in range(n):
        z = rng.choice((11, 12, 13, 14))
        t = tms.tile(rng.uniform(w, e), rng.uniform(s, no), z)
        urls.append(f"/tiles/{z}/{t.x}/{t.y}.png?composite=true_color&time={k % len(g['times'])}")
    return urls


def _fetch_all(port: int, urls: list[str], clients: int) -> tuple[float, list[float]]:
    """Wall seconds to fetch every URL with ``clients`` concurrent keep-alive connections,
    and each request's latency."""
    import http.client
    import threading

    lat: list[float] = []
    lock = threading.Lock()
    parts = [urls[i::clients] for i in range(clients)]

    def client(mine: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for u in mine:
            t0 = time.perf_counter()
            conn.request("GET", u)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or not body:
                raise RuntimeError(f"{u}: HTTP {r.status}")
            with lock:
                lat.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat


def _tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` and its descendants so far (Linux /proc;
    None elsewhere): the server's own work, which other jobs on a shared machine do not
    disturb as they do wall times."""
    import os

    try:
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except OSError:
        return None
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo.extend(c for c, (ppid, _) in stats.items() if ppid == p and c not in tree)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def throughput(store: Path, n_requests: int, clients: int, workers: int, echo) -> dict:
    """Tiles per second of ``s2ingest serve --workers N`` (a real server, HTTP on localhost)
    at 1 client and at ``clients`` clients, over the same tiles, after a warm-up pass; and the
    CPU time the server's processes spent per tile in each pass."""
    import os
    import subprocess
    import sys

    import requests

    exe = str(Path(sys.executable).with_name("s2ingest"))
    cmd = [exe, "serve", str(store), "--port", "0", "--workers", str(workers)] if Path(exe).exists() \
        else [sys.executable, "-m", "ingest.cli.main", "serve", str(store), "--port", "0", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        meta = None
        for _ in range(600):  # the worker processes open the cube
            try:
                meta = requests.get(f"http://127.0.0.1:{port}/api/meta", timeout=30).json()
                break
            except requests.RequestException:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}") from None
                time.sleep(0.1)
        if meta is None:
            raise RuntimeError("the server did not answer within a minute")
        urls = _tile_urls(meta, n_requests)
        _fetch_all(port, urls, clients)  # warm-up: every worker opens its arrays, caches fill
        out: dict = {"workers": workers, "requests": len(urls)}
        for n in (1, clients):
            cpu0 = _tree_cpu(proc.pid)
            wall, lat = _fetch_all(port, urls, n)
            cpu1 = _tree_cpu(proc.pid)
            cpu = None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / len(urls) * 1000, 1)
            out[f"clients_{n}"] = {"tiles_per_s": round(len(urls) / wall, 2), **_stats(lat),
                                   "server_cpu_ms_per_tile": cpu}
            echo(f"  {n} client(s): {out[f'clients_{n}']['tiles_per_s']} tiles/s, "
                 f"p50 {out[f'clients_{n}']['median_ms']} ms, p95 {out[f'clients_{n}']['p95_ms']} ms, "
                 f"server CPU {cpu} ms per tile")
        out["speedup"] = round(out[f"clients_{clients}"]["tiles_per_s"] / out["clients_1"]["tiles_per_s"], 3)
        out["goal"] = {"speedup_at_least": 1.5, "p95_ms_at_most": 200}
        out["loadavg"] = os.getloadavg()
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work folder (products and cubes are kept)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=20)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--requests", type=int, default=480, help="tiles per throughput pass (a tile now takes ~20 ms: enough passes for a stable p95)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="server processes [default: cores]")
    ap.add_argument("--only-throughput", action="store_true",
                    help="skip the publish cost and in-process latency (uses the demo cube of --demo-dir)")
    ap.add_argument("--demo-dir", type=Path, default=Path("bench-results/demo"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    echo = print
    import os

    from ingest.benchmarks.stats import demo_store

    report: dict = {"loadavg_before": os.getloadavg()}
    if not args.only_throughput:
        echo("overviews: publish cost")
        report["publish"] = publish_cost(args.dir, args.repeat, echo)
        echo(f"  overhead of the overviews at publish: {report['publish']['overviews_publish_overhead']:.1%} "
             f"wall, {report['publish']['overviews_publish_overhead_cpu']:.1%} CPU")
        echo("server latency (demo data, full NL grid)")
        report["latency"] = latency(args.dir / "base-overviews.zarr", args.tiles, args.points, echo)
    workers = args.workers or len(os.sched_getaffinity(0))
    echo(f"server throughput: `s2ingest serve --workers {workers}` on the demo cube, 1 and {args.clients} clients")
    report["throughput"] = throughput(demo_store(args.demo_dir, echo), args.requests, args.clients,
                                      workers, echo)
    report["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    echo(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()
