// s2ingest viewer: Leaflet (bundled), a time slider, a variable/composite picker, parcel
// outlines and a click -> time series chart. State for tests: window.viewer.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const viewer = { tilesLoaded: 0, tileErrors: 0, lastSeries: null, meta: null, ready: false };
  window.viewer = viewer;
  const map = L.map("map", { zoomControl: true, attributionControl: true });
  window.viewerMap = map;
  let imagery = null, outlines = null, marker = null;

  function group() { return $("group").value; }
  function orbit() { return parseInt(group().split("R")[1], 10); }
  function times() { return viewer.meta.groups[group()].times; }

  function tileUrl() {
    const p = $("product").value;
    const q = new URLSearchParams({ orbit: orbit(), time: $("time").value });
    if (p.startsWith("var:")) q.set("variable", p.slice(4)); else q.set("composite", p);
    return "tiles/{z}/{x}/{y}.png?" + q.toString();
  }

  function redraw() {
    const url = tileUrl();
    if (imagery) { imagery.setUrl(url); } else {
      imagery = L.tileLayer(url, { maxZoom: 18, maxNativeZoom: 16, attribution: "s2ingest cube" });
      imagery.on("tileload", () => { viewer.tilesLoaded += 1; });
      imagery.on("tileerror", () => { viewer.tileErrors += 1; });
      imagery.addTo(map);
    }
    viewer.tileUrl = url;
    $("date").textContent = times()[$("time").value] || "–";
  }

  function setOutlines() {
    if (outlines) { map.removeLayer(outlines); outlines = null; }
    const layer = $("outlines").value;
    if (layer) {
      outlines = L.tileLayer("tiles/layer/{z}/{x}/{y}.png?layer=" + encodeURIComponent(layer), { maxZoom: 18 }).addTo(map);
    }
  }

  function drawChart(series, label) {
    const cv = $("chart"), ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, cv.width, cv.height);
    const pts = series.filter((d) => d.value !== null && !Number.isNaN(d.value));
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.fillText(label, 6, 12);
    if (!pts.length) { ctx.fillText("no valid values", 6, 30); return; }
    const t = pts.map((d) => Date.parse(d.time)), v = pts.map((d) => d.value);
    const t0 = Math.min(...t), t1 = Math.max(...t) + 1;
    let v0 = Math.min(...v), v1 = Math.max(...v); if (v1 === v0) { v0 -= 0.1; v1 += 0.1; }
    const X = (x) => 30 + (x - t0) / (t1 - t0) * (cv.width - 40);
    const Y = (y) => cv.height - 20 - (y - v0) / (v1 - v0) * (cv.height - 40);
    ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(30, 20); ctx.lineTo(30, cv.height - 20);
    ctx.lineTo(cv.width - 5, cv.height - 20); ctx.stroke();
    ctx.fillText(v1.toFixed(3), 0, 24); ctx.fillText(v0.toFixed(3), 0, cv.height - 22);
    ctx.strokeStyle = "#0a7d2c"; ctx.lineWidth = 2; ctx.beginPath();
    pts.forEach((d, i) => { const x = X(t[i]), y = Y(v[i]); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    ctx.stroke();
    ctx.fillStyle = "#0a7d2c";
    pts.forEach((d, i) => { ctx.beginPath(); ctx.arc(X(t[i]), Y(v[i]), 3, 0, 2 * Math.PI); ctx.fill(); });
  }

  async function getJson(url) {
    const r = await fetch(url);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  // a click: the series of that pixel, or (Click: parcel) the mean over the BRP parcel there
  async function seriesAt(latlng) {
    if (marker) map.removeLayer(marker);
    marker = L.circleMarker(latlng, { radius: 5, color: "#f00" }).addTo(map);
    const q = new URLSearchParams({ orbit: orbit(), variable: $("seriesvar").value,
                                    clear: $("clear").checked });
    $("status").textContent = "loading…";
    try {
      let body, label;
      if ($("clickmode").value === "parcel") {
        const at = await getJson(`api/parcel?lon=${latlng.lng}&lat=${latlng.lat}`);
        if (!at.parcel) throw new Error("no parcel here");
        q.set("parcel", at.parcel);
        body = await getJson("api/series?" + q.toString());
        label = `${body.variable}, mean of parcel ${body.parcel}`;
        $("status").textContent = `${body.series.length} dates, parcel ${body.parcel}`;
      } else {
        q.set("lon", latlng.lng);
        q.set("lat", latlng.lat);
        body = await getJson("api/series?" + q.toString());
        label = `${body.variable} at ${latlng.lat.toFixed(5)}, ${latlng.lng.toFixed(5)}`;
        $("status").textContent = `${body.series.length} dates, pixel row ${body.row_col[0]} col ${body.row_col[1]}`;
      }
      viewer.lastSeries = body;
      drawChart(body.series, label);
    } catch (err) {
      $("status").textContent = err.message;
      viewer.lastSeries = { error: err.message };
    }
  }

  async function init() {
    const r = await fetch("api/meta");
    viewer.meta = await r.json();
    const groups = Object.keys(viewer.meta.groups);
    groups.forEach((g) => $("group").add(new Option("/" + g, g)));
    Object.keys(viewer.meta.composites).forEach((c) => $("product").add(new Option(c.replace("_", " "), c)));
    Object.keys(viewer.meta.variables).forEach((v) => $("product").add(new Option(v, "var:" + v)));
    ["NDVI", ...Object.keys(viewer.meta.variables)].forEach((v) => $("seriesvar").add(new Option(v, v)));
    if (viewer.meta.layers.includes("NL/BRP/parcel")) $("clickmode").add(new Option("parcel", "parcel"));
    const setSlider = () => { const n = times().length; $("time").max = Math.max(0, n - 1); $("time").value = Math.max(0, n - 1); };
    setSlider();
    const g = viewer.meta.groups[group()];
    const b = (g && g.data_bounds_wgs84) || viewer.meta.bounds_wgs84;
    map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
    $("outlines").add(new Option("none", ""));
    viewer.meta.layers.filter((l) => !l.endsWith("/crop") && !l.endsWith("/landuse"))
      .forEach((l) => $("outlines").add(new Option(l, l)));
    $("group").onchange = () => { setSlider(); redraw(); };
    $("product").onchange = redraw;
    $("time").oninput = redraw;
    $("outlines").onchange = setOutlines;
    map.on("click", (e) => seriesAt(e.latlng));
    redraw();
    viewer.ready = true;
  }
  init();
})();
