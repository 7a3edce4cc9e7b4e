"""Shared parts of the fake hubs: the product store, the fault plan and the server thread.

DESIGN CHOICE: stdlib ``ThreadingHTTPServer`` on 127.0.0.1 with a random port, run in a daemon
thread behind a context manager, so users' own tests need nothing beyond the standard library
and never touch the internet. Products are real zips from a directory; their metadata (uuid,
checksums, footprint, cloud cover) is derived from the files, so the fake cannot drift from what
it serves. Responses use HTTP/1.0 (one request per connection) so ``stop()`` really closes the
port, which is how "hub down" is simulated.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import uuid as uuidlib
import zipfile
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Sequence

from ingest.products.names import ProductName, strip_product_suffix

LonLat = tuple[float, float]

# Lon/lat bounds of the Sentinel-2 tiles over the Netherlands (ESA tiling grid), used as the
# footprint of products whose manifest.safe has none.
NL_TILE_LONLAT: dict[str, tuple[float, float, float, float]] = {
    "31UES": (3.0, 50.454, 4.58, 51.451), "31UET": (3.0, 51.353, 4.611, 52.35),
    "31UEU": (3.0, 52.252, 4.645, 53.25), "31UFS": (4.409, 50.426, 6.017, 51.442),
    "31UFT": (4.436, 51.325, 6.078, 52.341), "31UFU": (4.465, 52.223, 6.142, 53.24),
    "31UFV": (4.495, 53.12, 6.209, 54.138), "31UGS": (5.816, 50.382, 7.451, 51.416),
    "31UGT": (5.87, 51.279, 7.54, 52.314), "31UGU": (5.928, 52.175, 7.634, 53.212),
    "31UGV": (5.988, 53.071, 7.733, 54.109), "32ULB": (6.124, 50.43, 7.729, 51.444),
    "32ULC": (6.066, 51.328, 7.705, 52.343), "32ULD": (6.005, 52.226, 7.679, 53.242),
    "32ULE": (5.94, 53.124, 7.651, 54.14),
}
DEFAULT_BOX = (3.0, 50.4, 7.8, 54.2)
UUID_NAMESPACE = uuidlib.UUID("6f1c2a52-8d7e-4c1e-9a55-3b2f7d0e9c11")


def box_ring(b: tuple[float, float, float, float]) -> list[LonLat]:
    x0, y0, x1, y1 = b
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def ring_bbox(ring: Sequence[LonLat]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in ring]
    ys = [p[1] for p in ring]
    return (min(xs), min(ys), max(xs), max(ys))


def bbox_intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    """DESIGN CHOICE: the fakes test Intersects on bounding boxes (no shapely in the kit)."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def parse_wkt_ring(text: str) -> list[LonLat]:
    """The outer ring of ``POLYGON((x y, ...))`` (enough for search areas)."""
    m = re.search(r"POLYGON\s*\(\(([^()]*)\)", text, re.I)
    if not m:
        raise ValueError(f"not a WKT polygon: {text[:80]!r}")
    pts = []
    for pair in m.group(1).split(","):
        x, y = pair.split()[:2]
        pts.append((float(x), float(y)))
    return pts


def wkt(ring: Sequence[LonLat]) -> str:
    return "POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))"


# ------------------------------------------------------------------------------------------
# products


@dataclass
class FakeProduct:
    """One product a fake hub serves, with the facts hubs report about it."""

    name: str  # without .SAFE (an EOPF product: "<SAFE-style name>.zarr")
    path: Path  # the zip
    uuid: str
    size: int
    md5: str
    sha3_256: str
    footprint: list[LonLat]
    cloud_cover: float
    ingestion: datetime
    online: bool = True
    pn: ProductName = field(init=False)

    def __post_init__(self) -> None:
        self.pn = ProductName.parse(self.name)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return ring_bbox(self.footprint)

    @property
    def end(self) -> datetime:
        return self.pn.datatake_start + timedelta(seconds=1, milliseconds=24)


def _hashes(path: Path) -> tuple[str, str]:
    md5, sha3 = hashlib.md5(), hashlib.sha3_256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha3.update(block)
    return md5.hexdigest(), sha3.hexdigest()


def _zmetadata_facts(data: bytes) -> tuple[list[LonLat], float]:
    """EOPF: footprint (``stac_discovery.geometry``, lon/lat) and ``eo:cloud_cover`` of a ``.zmetadata``."""
    stac = json.loads(data)["metadata"][".zattrs"]["stac_discovery"]
    ring = [(float(x), float(y)) for x, y in stac["geometry"]["coordinates"][0]]
    return ring, float(stac["properties"].get("eo:cloud_cover") or 0.0)


def _zip_metadata(path: Path, tile: str) -> tuple[list[LonLat], float]:
    """Footprint (from manifest.safe gml:coordinates "lat lon ...", or an EOPF product's
    ``.zmetadata``) and cloud cover (MTD, or ``.zmetadata``)."""
    ring: list[LonLat] = []
    cloud = 0.0
    try:
        with zipfile.ZipFile(path) as zf:
            for n in zf.namelist():
                if n.split("/")[-1] == ".zmetadata" and n.count("/") <= 1 and zf.getinfo(n).file_size < 1 << 24:
                    try:
                        ring, cloud = _zmetadata_facts(zf.read(n))
                    except (KeyError, TypeError, ValueError, IndexError):
                        pass
                elif n.endswith("manifest.safe") and not ring:
                    m = re.search(rb"<gml:coordinates>([^<]+)</gml:coordinates>", zf.read(n))
                    if m:
                        vals = [float(v) for v in m.group(1).split()]
                        ring = [(vals[i + 1], vals[i]) for i in range(0, len(vals) - 1, 2)]
                elif re.search(r"(^|/)MTD_MSIL\w+\.xml$", n):
                    m = re.search(rb"<Cloud_Coverage_Assessment>\s*([0-9.]+)", zf.read(n))
                    if m:
                        cloud = float(m.group(1))
    except (OSError, zipfile.BadZipFile, ValueError):
        pass
    if len(ring) < 4:
        ring = box_ring(NL_TILE_LONLAT.get(tile, DEFAULT_BOX))
    return ring, cloud


class ProductStore:
    """The products of a fake hub, read from a directory of ``<name>.zip`` files."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, FakeProduct] = {}
        self.deleted: list[dict[str, Any]] = []
        if directory is not None:
            for p in sorted(Path(directory).glob("*.zip")):
                self.add(p)

    def add(self, path: str | Path, **overrides: Any) -> FakeProduct:
        """Serve a zip; ``overrides`` set FakeProduct fields (online, cloud_cover, footprint, ...)."""
        path = Path(path)
        name = strip_product_suffix(path.name)
        pn = ProductName.parse(name)
        md5, sha3 = _hashes(path)
        ring, cloud = _zip_metadata(path, pn.tile)
        facts: dict[str, Any] = dict(
            name=name, path=path, uuid=str(uuidlib.uuid5(UUID_NAMESPACE, name)), size=path.stat().st_size,
            md5=md5, sha3_256=sha3, footprint=ring, cloud_cover=cloud,
            ingestion=pn.discriminator + timedelta(hours=1),
        )
        facts.update(overrides)
        product = FakeProduct(**facts)
        with self._lock:
            self._by_id[product.uuid] = product
        return product

    def all(self) -> list[FakeProduct]:
        with self._lock:
            return list(self._by_id.values())

    def by_id(self, pid: str) -> FakeProduct | None:
        with self._lock:
            return self._by_id.get(pid)

    def by_name(self, name: str) -> FakeProduct | None:
        name = strip_product_suffix(name)
        return next((p for p in self.all() if p.name == name), None)

    def delete(self, name: str, cause: str = "Corrupted product", when: datetime | None = None) -> FakeProduct:
        """Remove a product (hub drift); it is listed in CDSE's DeletedProducts afterwards."""
        product = self.by_name(name)
        if product is None:
            raise KeyError(name)
        with self._lock:
            del self._by_id[product.uuid]
            self.deleted.append({"product": product, "when": when or datetime.now(timezone.utc), "cause": cause})
        return product


# ------------------------------------------------------------------------------------------
# faults


@dataclass
class _Fault:
    kind: str
    product: str | None  # None: any product
    times: int | None  # None: for ever
    value: Any = None
    route: str = "download"


class FaultPlan:
    """Scripted faults, consumed by the fake servers in order. Thread-safe.

    ``product`` is a product name (without .SAFE/.zip) or None for any product; ``times`` is
    how many requests the fault applies to (None: until ``clear()``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.log: deque[str] = deque(maxlen=1000)  # which faults fired, for assertions

    # -- scripting ----------------------------------------------------------------------------
    def drop_connection(self, product: str | None = None, after_bytes: int = 1024, times: int = 1) -> "FaultPlan":
        """Close the socket mid-body after ``after_bytes`` of the response body."""
        return self._add(_Fault("drop", product, times, after_bytes))

    def ignore_range(self, product: str | None = None, times: int = 1) -> "FaultPlan":
        """Answer a Range request with 200 and the whole file."""
        return self._add(_Fault("ignore_range", product, times))

    def wrong_checksum(self, product: str | None = None, times: int | None = None) -> "FaultPlan":
        """Advertise a wrong hub checksum."""
        return self._add(_Fault("wrong_checksum", product, times))

    def missing_checksum(self, product: str | None = None, times: int | None = None) -> "FaultPlan":
        """Advertise no checksum (CDSE: empty list; DHuS: none is not possible, an empty value)."""
        return self._add(_Fault("missing_checksum", product, times))

    def offline(self, product: str | None = None, requests: int = 1) -> "FaultPlan":
        """Offline (LTA) until ``requests`` retrieval requests (download attempts) were made."""
        return self._add(_Fault("offline", product, requests))

    def status(self, status: int, route: str = "download", times: int = 1,
               retry_after: float | None = None, headers: dict[str, str] | None = None) -> "FaultPlan":
        """Answer the next ``times`` requests on ``route`` with ``status``.

        Routes: "download" ($value), "search", "product" (one product's metadata), "token",
        "any".
        """
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        return self._add(_Fault("status", None, times, (status, hdrs), route))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: _Fault) -> "FaultPlan":
        with self._lock:
            self._faults.append(fault)
        return self

    # -- consumption (servers) ------------------------------------------------------------------
    def _take(self, kind: str, product: str | None, route: str | None = None, consume: bool = True) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.kind != kind or (f.product is not None and f.product != product):
                    continue
                if route is not None and f.route not in (route, "any"):
                    continue
                if consume and f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                self.log.append(f"{kind}:{product or route}")
                return f
        return None

    def take_status(self, route: str) -> tuple[int, dict[str, str]] | None:
        f = self._take("status", None, route)
        return None if f is None else f.value

    def take_drop(self, product: str) -> int | None:
        f = self._take("drop", product)
        return None if f is None else int(f.value)

    def take_ignore_range(self, product: str) -> bool:
        return self._take("ignore_range", product) is not None

    def checksum_fault(self, product: str) -> str | None:
        """'wrong', 'missing' or None for the checksum advertised for this product."""
        if self._take("wrong_checksum", product) is not None:
            return "wrong"
        if self._take("missing_checksum", product) is not None:
            return "missing"
        return None

    def is_offline(self, product: str) -> bool:
        with self._lock:
            return any(f.kind == "offline" and f.product in (None, product) for f in self._faults)

    def note_retrieval_request(self, product: str) -> bool:
        """Count a download attempt on an offline product; True if it was (still) offline."""
        return self._take("offline", product) is not None


# ------------------------------------------------------------------------------------------
# HTTP plumbing


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    server: str


class FakeHandler(BaseHTTPRequestHandler):
    """Base handler: request log, JSON/text replies and file bodies with Range and faults."""

    server_version = "FakeHub/1.0"
    protocol_version = "HTTP/1.0"
    app: Any = None  # set per server class

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _record(self) -> None:
        self.app.requests.append(RequestRecord(self.command, self.path, dict(self.headers.items()), self.app_role))

    @property
    def app_role(self) -> str:
        return getattr(self.server, "role", "main")

    def reply(self, status: int, body: bytes | str = b"", content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def reply_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj), "application/json", headers)

    def maybe_status_fault(self, route: str) -> bool:
        """Apply a scripted status fault for this route; True if the request was answered."""
        fault = self.app.faults.take_status(route)
        if fault is None:
            return False
        status, headers = fault
        if status == 401:
            headers = {"WWW-Authenticate": 'Basic realm="fake"', **headers}
        self.reply(status, f"scripted fault {status}", headers=headers)
        return True

    def send_product(self, product: FakeProduct, extra_headers: dict[str, str] | None = None) -> None:
        """The product zip, honouring ``Range: bytes=N-[M]`` unless a fault says otherwise."""
        faults: FaultPlan = self.app.faults
        total = product.size
        start, end = 0, total - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and not (self.command == "GET" and faults.take_ignore_range(product.name)):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
                if start >= total:
                    self.reply(416, "", headers={"Content-Range": f"bytes */{total}"})
                    return
                status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Disposition", f'inline;filename="{product.name}.zip"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        drop = faults.take_drop(product.name) if length > 2 else None
        with open(product.path, "rb") as f:
            f.seek(start)
            remaining = length if drop is None else min(drop, length - 1)
            while remaining > 0:
                block = f.read(min(remaining, 1 << 16))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
        if drop is not None:
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class ServerThread:
    """One HTTP server on 127.0.0.1 in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], role: str = "main", port: int = 0) -> None:
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.role = role  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fakehub-{role}", daemon=True)
        self.running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


def free_port() -> int:
    """A port nobody listens on (for "hub down" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iso_z(dt: datetime, ms: bool = True) -> str:
    dt = dt.astimezone(timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{dt.microsecond // 1000:03d}Z" if ms else "Z")


def parse_iso(text: str) -> datetime:
    text = text.strip().strip("'\"")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------
# tiny hand-made products (a fallback for tests that do not need real rasters)


def make_tiny_product(
    out_dir: str | Path, name: str = "S2B_MSIL2A_20230823T105619_N0509_R051_T31UFU_20230823T124759",
    *, cloud_cover: float = 12.5, payload: bytes | None = None, corrupt_member: bool = False,
    with_manifest: bool = True, algorithm: str | None = None,
) -> Path:
    """A small but well-formed ``<name>.zip`` (root ``<name>.SAFE/``) with a manifest.safe.

    Not a readable product (the "JP2" is random bytes): for hub and verification tests only.
    The manifest uses MD5 for baselines before 05.00 and SHA3-256 from 05.00, as ESA does.
    ``corrupt_member`` flips a byte in the JP2 *after* the manifest was written.
    """
    pn = ProductName.parse(name)
    algo = algorithm or ("MD5" if pn.baseline < "05.00" else "SHA3-256")
    hfun = hashlib.md5 if algo == "MD5" else hashlib.sha3_256
    ring = box_ring(NL_TILE_LONLAT.get(pn.tile, DEFAULT_BOX))
    mtd = (f"<?xml version='1.0'?><n1:Level-2A_User_Product xmlns:n1='x'><PRODUCT_URI>{pn.name}.SAFE"
           f"</PRODUCT_URI><Cloud_Coverage_Assessment>{cloud_cover}</Cloud_Coverage_Assessment>"
           f"</n1:Level-2A_User_Product>").encode()
    granule = f"GRANULE/L2A_T{pn.tile}_A000000_{pn.datatake_start:%Y%m%dT%H%M%S}/IMG_DATA/R10m"
    jp2 = payload if payload is not None else hashlib.sha256(name.encode()).digest() * 256
    files = {"MTD_MSIL2A.xml": mtd, f"{granule}/T{pn.tile}_{pn.datatake_start:%Y%m%dT%H%M%S}_B02_10m.jp2": jp2}
    objects = "".join(
        f'<dataObject ID="obj{i}"><byteStream mimeType="application/octet-stream" size="{len(data)}">'
        f'<fileLocation locatorType="URL" href="./{rel}"/>'
        f'<checksum checksumName="{algo}">{hfun(data).hexdigest()}</checksum></byteStream></dataObject>'
        for i, (rel, data) in enumerate(files.items())
    )
    coords = " ".join(f"{lat} {lon}" for lon, lat in ring)
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" '
        'xmlns:gml="http://www.opengis.net/gml" xmlns:safe="http://www.esa.int/safe/sentinel/1.1">'
        f"<metadataSection><safe:footPrint><gml:coordinates>{coords}</gml:coordinates></safe:footPrint>"
        f"</metadataSection><dataObjectSection>{objects}</dataObjectSection></xfdu:XFDU>"
    ).encode()
    if corrupt_member:
        key = next(k for k in files if k.endswith(".jp2"))
        data = bytearray(files[key])
        data[len(data) // 2] ^= 0xFF
        files[key] = bytes(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{pn.name}.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        root = f"{pn.name}.SAFE/"
        if with_manifest:
            zf.writestr(root + "manifest.safe", manifest)
        for rel, data in files.items():
            zf.writestr(root + rel, data)
    path.write_bytes(buf.getvalue())
    return path


def tiny_names(tiles: Iterable[str] = ("31UFU",), days: Iterable[int] = (1,), orbit: int = 51,
               month: str = "202308", baseline: str = "N0509", platform: str = "S2B") -> list[str]:
    """Product names for tiny products: one per tile and day of ``month``."""
    return [f"{platform}_MSIL2A_{month}{d:02d}T105619_{baseline}_R{orbit:03d}_T{t}_{month}{d:02d}T124759"
            for d in days for t in tiles]
