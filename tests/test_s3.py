"""A cube in an S3 bucket (``s3://bucket/prefix/nl.zarr``): the same contract as on a local disk.

A local S3 server (moto's server mode, with conditional writes) runs in this process; syncs run
as real ``s2ingest`` processes with ``--s3-endpoint``, are killed (``S2INGEST_FAULT``) mid-commit
and rerun, and the result is compared with a local-disk cube of the same products, read by
xarray over s3 (s3fs) and checked by ``s2ingest verify --deep``.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from catalog import open_catalog, session_scope
from catalog.models import Product as Row
from catalog.models import TimeStep
from conftest import D1, D3, GROUP, assert_cubes_equal, cli_env, written_window
from ingest.store.bookkeeping.codec import POINTER_KEYS
from ingest.errors import NotACubeError, StoreBusyError, StoreLeaseLostError
from ingest.store import CubeStore, check_location, read_published
from ingest.store.backends.s3 import LOCK_KEY, S3Backend, S3Lease
from ingest.store.layout import META_DIR
from test_commit import _folder

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 server on a free port; credentials in the environment (boto3's usual chain)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=endpoint)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def bucket(s3_endpoint) -> str:
    import boto3

    name = f"cubes-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _s3(*args: str, endpoint: str, config: Path, fault: str | None = None):
    env = cli_env(**CREDENTIALS, **({"S2INGEST_FAULT": fault} if fault else {}))
    env.pop("AWS_ENDPOINT_URL_S3", None)  # the option must do it
    # in the config's folder: an s3:// store's default cache is ./<name>.cache
    return subprocess.run([S2INGEST, *args, "--config", str(config), "--s3-endpoint", endpoint],
                          env=env, capture_output=True, text=True, timeout=600, cwd=config.parent)


def _download(backend: S3Backend, to: Path) -> Path:
    """Every key of the S3 cube but ``.s2ingest/`` into a local folder, byte for byte."""
    for key in backend.list(""):
        if key.startswith(META_DIR + "/"):
            continue
        target = to / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(backend.get(key))
    return to


def _local_cube(source: Path, tmp_path: Path, config: Path) -> Path:
    """The reference: one uninterrupted sync of ``source`` onto a local disk."""
    local = tmp_path / "local" / "cube.zarr"
    local.parent.mkdir()
    r = subprocess.run([S2INGEST, "sync", "--config", str(config), "--store", str(local),
                        "--source", str(source), "--no-progress"], env=cli_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return local


def _catalog(url: str) -> dict:
    engine = open_catalog(url, create=False)
    with session_scope(engine) as s:
        out = {"products": sorted((r.name, r.state) for r in s.scalars(select(Row))),
               "steps": sorted((t.time.replace(tzinfo=None), t.platform, t.datatake_id)
                               for t in s.scalars(select(TimeStep))),
               "leases": [r.name for r in s.scalars(select(Row).where(Row.lease_owner.is_not(None)))]}
    engine.dispose()
    return out


# -- the lease ---------------------------------------------------------------------------------
def test_the_s3_lease_excludes_a_second_writer_is_taken_over_when_expired_and_fences(bucket):
    backend = S3Backend(f"s3://{bucket}/lease/nl.zarr")
    a = S3Lease(backend, ttl=30, holder="host-a:1")
    a.acquire(0)
    b = S3Lease(backend, ttl=30, holder="host-b:2")
    with pytest.raises(StoreBusyError, match=r"being written by another process \(host-a:1\)"):
        b.acquire(0.6)
    assert a.renew() and not a.lost  # the heartbeat's step: If-Match on its own ETag

    a._stop.set()  # host-a hangs: its lease is no longer renewed
    a._thread.join()
    c = S3Lease(backend, ttl=1, holder="host-c:3")  # sees the same ETag for 1 s: expired
    c.acquire(30)
    assert backend.get(LOCK_KEY) and b"host-c:3" in backend.get(LOCK_KEY)
    with pytest.raises(StoreLeaseLostError, match="took over"):
        with a.fence():
            pass
    assert a.lost
    a.release()  # never deletes someone else's lease
    assert b"host-c:3" in backend.get(LOCK_KEY)
    with c.fence():  # the holder passes its own fence
        pass
    c.release()
    assert backend.get(LOCK_KEY) is None


def test_a_transaction_whose_s3_lease_was_taken_over_publishes_nothing(bucket):
    from ingest.grid import NL_GRID

    url = f"s3://{bucket}/fenced/nl.zarr"
    store, created = CubeStore.create(url, NL_GRID)
    assert created and store.version() == 1
    before = {k: store.backend.get(k) for k in store.backend.list("")}
    with pytest.raises(StoreLeaseLostError, match="nothing was published"):
        with store.transaction(timeout=1) as tx:
            tx.update_attrs("", {"note": "never published"})
            # another writer takes the lease over (as after an expiry) and stages its own work
            other = S3Lease(store.backend, holder="elsewhere:9")
            store.backend.put(LOCK_KEY, b'{"holder": "elsewhere:9"}')
            store.backend.put(".s2ingest/txn/stage/theirs/S2/R051/.zattrs", b"{}")
            tx.commit()
    assert other.holder == "elsewhere:9"
    after = {k: store.backend.get(k) for k in store.backend.list("")}
    assert after.pop(".s2ingest/txn/stage/theirs/S2/R051/.zattrs") == b"{}"  # not touched
    assert after.pop(LOCK_KEY) == b'{"holder": "elsewhere:9"}'  # not released by the loser
    before.pop(LOCK_KEY, None)
    # the loser's own staging, and the bookkeeping objects it wrote before its commit point:
    # content-addressed and named by nothing (never deleted by a writer that lost its lock:
    # the new holder may rely on an identical object)
    staged = [k for k in after if k.startswith(".s2ingest/txn/") or
              (k.startswith((".s2ingest/pieces/", ".s2ingest/lists/", ".s2ingest/meta/", ".s2ingest/objects/"))
               and k not in before)]
    assert {k: v for k, v in after.items() if k not in staged} == before
    assert store.version() == 1 and "note" not in store.consolidated("")[".zattrs"]


def test_an_s3_prefix_holding_other_objects_is_refused(bucket):
    backend = S3Backend(f"s3://{bucket}")
    backend.put("data/report.csv", b"a,b\n")
    with pytest.raises(NotACubeError, match=r"holds other objects \(report.csv\)"):
        check_location(f"s3://{bucket}/data/")
    backend.put("data/zarr/.zgroup", b'{"zarr_format": 2}')
    with pytest.raises(NotACubeError, match="Zarr store without grid.json"):
        check_location(f"s3://{bucket}/data/zarr")
    check_location(f"s3://{bucket}/data/new.zarr")  # empty: fine


# -- sync, crash, rerun --------------------------------------------------------------------------
def test_lease_writes_that_s3_applied_but_whose_answers_were_lost_are_recognised_as_ours(bucket, s3_endpoint):
    """A lease PUT applied by S3 whose answer is lost: botocore retries it, the retry fails its
    own condition (412); the lease reads its token back and knows the object is its own."""
    import boto3

    from ingest.testing.s3proxy import proxy

    with proxy(s3_endpoint) as p:
        backend = S3Backend(f"s3://{bucket}/lost/nl.zarr",
                            client=boto3.client("s3", endpoint_url=p.url))
        take = p.drop_answer("PUT", LOCK_KEY, header="If-None-Match")
        lease = S3Lease(backend, ttl=30, holder="host-a:1")
        lease.acquire(5)  # without the token check: "being written by another process (host-a:1)"
        renew = p.drop_answer("PUT", LOCK_KEY, header="If-Match", times=2)
        assert lease.renew() and not lease.lost
        with lease.fence():
            pass
        assert take.dropped == 1 and renew.dropped == 2
        p.drop_answer("DELETE", LOCK_KEY)
        lease.release()
        assert backend.get(LOCK_KEY) is None
        # another writer's lease is still another's: a failed condition with a foreign body
        other = S3Lease(backend, ttl=30, holder="host-b:2")
        other.acquire(0)
        with pytest.raises(StoreBusyError, match=r"host-b:2"):
            S3Lease(backend, ttl=30, holder="host-c:3").acquire(0.6)
        other.release()


def test_sync_into_s3_completes_when_s3_applies_a_lease_put_and_loses_its_answer(
        tmp_path, products, bucket, s3_endpoint, empty_config):
    from ingest.testing.s3proxy import proxy

    folder = _folder([products.scene[(D1, "31UET")]], tmp_path / "src")
    url = f"s3://{bucket}/lost/nl.zarr"
    db = f"sqlite:///{tmp_path / 'nl.catalog.sqlite'}"
    with proxy(s3_endpoint) as p:
        take = p.drop_answer("PUT", LOCK_KEY, header="If-None-Match")
        fence = p.drop_answer("PUT", LOCK_KEY, header="If-Match")
        r = _s3("sync", "--store", url, "--db", db, "--source", str(folder), "--no-progress",
                endpoint=p.url, config=empty_config)
    assert (take.dropped, fence.dropped) == (1, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_published(url, GROUP).times == (D1,)
    assert CubeStore.open(url).backend.get(LOCK_KEY) is None


@pytest.mark.slow
def test_sync_into_s3_survives_kills_mid_commit_and_equals_the_local_cube(
        tmp_path, products, bucket, s3_endpoint, empty_config):
    scenes = {d: [products.scene[(d, "31UET")]] for d in (D1, D3)}
    first = _folder(scenes[D1], tmp_path / "first")
    both = _folder(scenes[D1] + scenes[D3], tmp_path / "both")
    local = _local_cube(both, tmp_path, empty_config)

    url = f"s3://{bucket}/team/nl.zarr"
    db = f"sqlite:///{tmp_path / 'nl.catalog.sqlite'}"
    sync = ["sync", "--store", url, "--db", db, "--no-progress"]
    # the first commit (it creates the cube) is killed half way through its switch
    r = _s3(*sync, "--source", str(first), endpoint=s3_endpoint, config=empty_config,
            fault="switch.data@2")
    assert r.returncode == -9, r.stderr
    store = CubeStore.open(url)
    assert store.has_unfinished_commit()
    # the next sync completes that commit, then its own is killed at the commit point
    r = _s3(*sync, "--source", str(both), endpoint=s3_endpoint, config=empty_config,
            fault="journal.written")
    assert r.returncode == -9, r.stderr
    assert read_published(url, GROUP).times == (D1,)  # the journal alone publishes nothing yet
    assert store.backend.get(".s2ingest/txn/journal.json") is not None
    r = _s3(*sync, "--source", str(both), endpoint=s3_endpoint, config=empty_config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_published(url, GROUP).times == (D1, D3)
    assert not store.has_unfinished_commit() and store.backend.get(LOCK_KEY) is None

    # the same arrays and chunks as the local cube, key for key
    copy = _download(store.backend, tmp_path / "copy" / "cube.zarr")
    assert_cubes_equal(copy, local)
    # the same catalog
    ref = _catalog(f"sqlite:///{local.parent / 'cube.catalog.sqlite'}")
    got = _catalog(db)
    assert got == ref and got["leases"] == [] and {s for _, s in got["products"]} == {"published"}

    # readable by xarray over s3
    import xarray as xr

    window = written_window(local)
    remote = xr.open_zarr(url, group=GROUP, consolidated=True, mask_and_scale=False,
                          storage_options={"endpoint_url": s3_endpoint})
    ref_ds = xr.open_zarr(str(local), group=GROUP, consolidated=True, mask_and_scale=False)
    for var in ("B04", "SCL", "CLD"):
        assert np.array_equal(remote[var][:, window[0], window[1]].values,
                              ref_ds[var][:, window[0], window[1]].values), var
    assert list(remote.time.values) == list(ref_ds.time.values)

    r = _s3("verify", "--deep", "--db", db, url, endpoint=s3_endpoint, config=empty_config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: {url} at version 2" in r.stdout
    # verify finds damage over s3 too
    key = next(k for k in store.backend.list("S2/R051/B04") if not k.rsplit("/", 1)[-1].startswith("."))
    damaged = bytearray(store.backend.get(key))
    damaged[-1] ^= 0x01
    store.backend.put(key, bytes(damaged))
    r = _s3("verify", "--deep", "--no-catalog", url, endpoint=s3_endpoint, config=empty_config)
    assert r.returncode == 9 and "sha256 differs" in r.stdout


def test_mirror_to_and_from_s3_is_the_version_byte_for_byte(tmp_path, bucket, s3_endpoint, products):
    """A local cube mirrored into S3, then from S3 back to a local folder, with a damaged key in
    S3 found by verify and repaired by the next mirror."""
    import hashlib
    import json as _json

    from conftest import build_cube

    source = tmp_path / "src.zarr"
    build_cube(source, [products.scene[(D1, "31UET")]], products)
    keys = CubeStore.open(source).manifest()["keys"]
    url = f"s3://{bucket}/copies/nl.zarr"
    env = cli_env(**CREDENTIALS)
    env.pop("AWS_ENDPOINT_URL_S3", None)

    def cli(*args):
        return subprocess.run([S2INGEST, *args, "--s3-endpoint", s3_endpoint], env=env,
                              capture_output=True, text=True, timeout=300)

    r = cli("mirror", str(source), url, "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    backend = CubeStore.open(url).backend
    in_s3 = {k: hashlib.sha256(backend.get(k)).hexdigest() for k in backend.list("")
             if not k.startswith(META_DIR + "/") and k not in POINTER_KEYS}  # those name the root
    assert in_s3 == {k: e["sha256"] for k, e in keys.items()}
    assert cli("verify", "--deep", "--no-catalog", url).returncode == 0
    victim = next(k for k in keys if k.startswith(f"{GROUP}/B04/"))
    backend.put(victim, b"damaged")
    assert cli("verify", "--deep", "--no-catalog", url).returncode == 9
    r = cli("mirror", str(source), url, "--no-progress", "--json")
    assert r.returncode == 0 and _json.loads(r.stdout)["repaired"] == 1, r.stderr
    # the data-store API reads the S3 copy, pinned to its version, like the local source
    import s2ingest
    import xarray as xr

    window = dict(y=slice(27000, 27700), x=slice(0, 700))
    remote = s2ingest.open_cube(url, variables=["B04", "SCL"]).isel(**window).load()
    local = s2ingest.open_cube(str(source), variables=["B04", "SCL"]).isel(**window).load()
    assert remote.attrs.pop("s2ingest_source") == url and local.attrs.pop("s2ingest_source") == str(source)
    xr.testing.assert_identical(remote, local)
    assert [v["version"] for v in s2ingest.list_versions(url)][-1] == CubeStore.open(url).version()
    back = tmp_path / "back.zarr"
    r = cli("mirror", url, str(back), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert {p.relative_to(back).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in back.rglob("*") if p.is_file() and ".s2ingest" not in p.parts
            and p.relative_to(back).as_posix() not in POINTER_KEYS} == {k: e["sha256"] for k, e in keys.items()}


def test_sync_workers_stage_into_the_bucket_and_equal_the_local_cube(
        tmp_path, products, bucket, s3_endpoint, empty_config):
    """Worker processes (the S3 settings passed on by the ``sync`` process) write their chunks
    into the commit's staging prefix in the bucket themselves; the cube equals a local one."""
    both = _folder([products.scene[(d, "31UET")] for d in (D1, D3)], tmp_path / "both")
    local = _local_cube(both, tmp_path, empty_config)
    url = f"s3://{bucket}/team/nl.zarr"
    r = _s3("-v", "sync", "--store", url, "--no-progress", "--workers", "2",
            "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", "--source", str(both),
            endpoint=s3_endpoint, config=empty_config)
    assert r.returncode == 0, r.stdout + r.stderr
    # the workers staged every chunk in the bucket themselves; none came back through sync
    import re

    counts = [(int(a), int(b)) for a, b in re.findall(
        r"(\d+) chunks staged by the workers themselves, (\d+) sent back", r.stderr)]
    assert counts and all(a > 0 and b == 0 for a, b in counts), r.stderr
    assert "cannot see the store" not in r.stdout + r.stderr
    store = CubeStore.open(url)
    assert not store.backend.has_prefix(".s2ingest/txn")
    assert_cubes_equal(_download(store.backend, tmp_path / "copy" / "cube.zarr"), local)
