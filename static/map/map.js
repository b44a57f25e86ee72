// The map page: the served model's receivers, a sample scene or the user's own capture through
// /predict, and an ellipse playground on /ellipse. Leaflet and the Natural Earth borders are
// vendored (static/map/vendor), so the page works offline; OpenStreetMap tiles are added on top
// only when the browser can reach them. `window.rfmap` exposes the drawn layers to the tests.

const OSM = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
const $ = (id) => document.getElementById(id);

const map = L.map("map", { worldCopyJump: true }).setView([45.0, 8.0], 6);
map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
const layers = { receivers: L.layerGroup().addTo(map), scene: L.layerGroup().addTo(map) };
export const rfmap = (window.rfmap = { map, layers, last: {}, redraws: 0, ready: false });

async function api(path, body) {
  const response = await fetch(`../${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error ?? `${path}: HTTP ${response.status}`);
  return answer;
}

function show(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

const km = (metres) => `${(metres / 1000).toFixed(metres < 10000 ? 2 : 1)} km`;

// --- basemap: Natural Earth borders always, OpenStreetMap tiles when reachable ---------------
async function basemap() {
  const topo = await (await fetch("vendor/world-atlas/countries-50m.json")).json();
  L.geoJSON(topojson.feature(topo, topo.objects.countries), {
    style: { color: "#8c96a3", weight: 0.8, fillColor: "#f4f1ea", fillOpacity: 1 },
    interactive: false,
    attribution: "Borders: Natural Earth",
  }).addTo(map);
  try {
    await fetch(OSM.replace("{z}/{x}/{y}", "0/0/0"), { mode: "no-cors", cache: "no-store" });
    L.tileLayer(OSM, {
      maxZoom: 18,
      attribution: '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a>',
    }).addTo(map);
    show("basemap", "Basemap: OpenStreetMap over Natural Earth.");
  } catch {
    show("basemap", "Offline: Natural Earth borders (OpenStreetMap unreachable).");
  }
}

// --- the served model's receivers ------------------------------------------------------------
async function receivers() {
  const info = await api("model/info");
  const points = info.feature_spec.receivers.map((r) => [r.latitude, r.longitude]);
  info.feature_spec.receivers.forEach((r, i) =>
    L.circleMarker(points[i], { radius: 6, color: "#1f6feb", fillOpacity: 0.9 })
      .bindTooltip(r.name, { permanent: true, direction: "right", className: "receiver" })
      .addTo(layers.receivers),
  );
  map.fitBounds(L.latLngBounds(points).pad(0.6));
  show("model", `${info.bento_model_tag} · ${info.model_version} · ${points.length} receivers`);
  rfmap.info = info;
}

// --- predictions: sample scene and the user's own capture ------------------------------------
function drawPrediction(prediction, truth) {
  layers.scene.clearLayers();
  const at = [prediction.position.latitude, prediction.position.longitude];
  const ellipse = L.geoJSON(prediction.ellipse.geojson, {
    style: { color: prediction.quality === "fix" ? "#d1242f" : "#9a6700", weight: 2 },
  }).addTo(layers.scene);
  L.circleMarker(at, { radius: 5, color: "#d1242f", fillOpacity: 1 })
    .bindTooltip("predicted")
    .addTo(layers.scene);
  layers.ellipse = ellipse;
  const bounds = ellipse.getBounds().extend(at);
  let error = null;
  if (truth) {
    const real = [truth.latitude, truth.longitude];
    L.circleMarker(real, { radius: 6, color: "#1a7f37", fillOpacity: 1 })
      .bindTooltip("true transmitter")
      .addTo(layers.scene);
    L.polyline([at, real], { color: "#1a7f37", dashArray: "4 4", weight: 1.5 }).addTo(layers.scene);
    error = map.distance(at, real); // great circle (Leaflet's Earth CRS)
    bounds.extend(real);
  }
  map.fitBounds(bounds.pad(0.2));
  return error;
}

function describe(prediction, error) {
  const e = prediction.ellipse;
  const parts = [
    `${prediction.quality}`,
    `${prediction.position.latitude.toFixed(4)}, ${prediction.position.longitude.toFixed(4)}`,
    `95 % ellipse ${km(e.semi_major_m)} × ${km(e.semi_minor_m)}`,
  ];
  if (error !== null) parts.push(`error ${km(error)}`);
  if (prediction.warnings.length) parts.push(prediction.warnings.join("; "));
  return parts.join(" · ");
}

async function sampleScene() {
  show("scene-result", "predicting…");
  try {
    const scene = await api("sample_scene", {});
    const prediction = await api("predict", { iq_b64: scene.iq_b64, include_geojson: true });
    const error = drawPrediction(prediction, scene.transmitter);
    rfmap.last = { scene, prediction, error };
    show("scene-result", `scene ${scene.seed}: ${describe(prediction, error)}`);
  } catch (err) {
    show("scene-result", err.message, true);
  }
}

// .npy (version 1-3): magic, header length, a Python dict literal, then the data
function npyToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const wide = bytes[6] >= 2;
  const headerLength = wide ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = (wide ? 12 : 10) + headerLength;
  const header = new TextDecoder().decode(bytes.slice(wide ? 12 : 10, start));
  if (!/'descr':\s*'<c8'/.test(header)) throw new Error("expected complex64 ('<c8') samples");
  if (/'fortran_order':\s*True/.test(header)) throw new Error("expected C order, not Fortran");
  let text = "";
  const data = bytes.subarray(start);
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode(...data.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

async function ownCapture(file) {
  show("file-result", `reading ${file.name}…`);
  try {
    const body = file.name.endsWith(".npy")
      ? { iq_b64: npyToBase64(await file.arrayBuffer()) }
      : JSON.parse(await file.text());
    const prediction = await api("predict", { ...body, include_geojson: true });
    rfmap.last = { prediction, error: drawPrediction(prediction, null) };
    show("file-result", `${file.name}: ${describe(prediction, null)}`);
  } catch (err) {
    show("file-result", `${file.name}: ${err.message}`, true);
  }
}

// --- ellipse playground ------------------------------------------------------------------------
const playground = { at: L.latLng(45.0, 7.7), layer: null, pending: null };
const sliders = ["sigma_x", "sigma_y", "rho", "confidence"];

function params() {
  return {
    latitude: playground.at.lat,
    longitude: playground.at.lng,
    sigma_x: 10 ** Number($("sigma_x").value),
    sigma_y: 10 ** Number($("sigma_y").value),
    rho: Number($("rho").value),
    confidence_level: Number($("confidence").value),
  };
}

async function redraw() {
  const p = params();
  $("sigma_x-out").textContent = km(p.sigma_x);
  $("sigma_y-out").textContent = km(p.sigma_y);
  $("rho-out").textContent = p.rho.toFixed(2);
  $("confidence-out").textContent = p.confidence_level.toFixed(3);
  try {
    const ellipse = await api("ellipse", p);
    if (playground.layer) playground.layer.remove();
    playground.layer = L.geoJSON(ellipse.geojson, {
      style: { color: "#8250df", weight: 2, dashArray: "6 3" },
    }).addTo(map);
    layers.playground = playground.layer;
    rfmap.redraws += 1;
    rfmap.lastEllipse = { params: p, ellipse };
    show("playground-result", `${km(ellipse.semi_major_m)} × ${km(ellipse.semi_minor_m)}, ` +
      `${ellipse.orientation_deg.toFixed(1)}° from north`);
  } catch (err) {
    show("playground-result", err.message, true);
  }
}

function schedule() {
  clearTimeout(playground.pending);
  playground.pending = setTimeout(redraw, 60);
}

function placeAt(latlng, fly) {
  playground.at = L.latLng(latlng);
  if (fly) map.setView(playground.at, 3);
  schedule();
}

// --- wiring --------------------------------------------------------------------------------------
$("scene").addEventListener("click", sampleScene);
$("file").addEventListener("change", (e) => e.target.files[0] && ownCapture(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) ownCapture(e.dataTransfer.files[0]);
});
sliders.forEach((id) => $(id).addEventListener("input", schedule));
document.querySelectorAll("button[data-at]").forEach((b) =>
  b.addEventListener("click", () => placeAt(b.dataset.at.split(",").map(Number), true)),
);
map.on("click", (e) => placeAt(e.latlng, false));

await Promise.all([basemap(), receivers()]);
await redraw();
rfmap.ready = true;
