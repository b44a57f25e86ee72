#!/usr/bin/env bash
# Build the bento's image with podman and prove it serves: /readyz and a correct /predict from
# inside the container, then once more as the Kubernetes pod runs it (read-only root, a tmpfs
# /tmp, no capabilities, no privilege escalation). Not part of `make test`: it installs system packages (podman, runc,
# debootstrap, uidmap) and builds a ~1 GB image. Run as root on a Debian host: `make container-test`.
#
# The podman setup (tools, configuration, the locally built base image, the bento's image) is
# deploy/podman-env.sh, shared with deploy/replicas-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-3300}
# shellcheck source=deploy/podman-env.sh
source deploy/podman-env.sh
build_image
build_s=$BUILD_SECONDS
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')

log "run"
podman rm -f rf-localization-test >/dev/null 2>&1 || true
podman run -d --name rf-localization-test --network host \
  -e BENTOML_PORT="$PORT" -e SERVICE_WORKERS=1 "$IMAGE" serve --port "$PORT" >/dev/null
cleanup() {
  podman logs rf-localization-test > "$WORK/container.log" 2>&1 || true
  podman logs rf-localization-ro > "$WORK/container-read-only.log" 2>&1 || true
  # one name per `podman rm`: podman 4.3 removes nothing when one of several names is missing
  podman rm -f rf-localization-test >/dev/null 2>&1 || true
  podman rm -f rf-localization-ro >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_ready "$PORT"
log "image facts"
base_size=$(podman image inspect "$BASE" --format '{{.Size}}')
user=$(podman run --rm --entrypoint id "$IMAGE" -un)
tools=$(podman run --rm --entrypoint sh "$IMAGE" -c 'for t in gcc cc g++ make git; do command -v $t; done; true')
[ "$user" != root ] || { echo "the image runs as root"; exit 1; }
[ -z "$tools" ] || { echo "compilers or git in the image: $tools"; exit 1; }
podman run --rm --entrypoint sh "$IMAGE" -c \
  'du -sm /app/.venv/lib/python3.11/site-packages/* | sort -rn | head -8' > "$WORK/top-packages.txt"
cat "$WORK/top-packages.txt"

"$PY" - "$PORT" "$build_s" "$size" "$base_size" "$user" "$WORK/top-packages.txt" <<'PYCHECK'
import base64, json, sys, urllib.request
import numpy as np
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes
from utils.geo.ellipse import local_offsets_m

port, build_s, size, base_size, user = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
top = [line.split("\t") for line in open(sys.argv[6]).read().splitlines()]
scenes = generate_scenes(20, seed=31337, spec=FeatureSpec())
body = {"iq_b64_samples": [base64.b64encode(c.astype("<c8").tobytes()).decode() for c in scenes.iq]}
req = urllib.request.Request(f"http://127.0.0.1:{port}/predict_batch", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
predictions = json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]
errors = []
for p, lat, lon in zip(predictions, scenes.tx_latitude, scenes.tx_longitude):
    east, north = local_offsets_m(lat, lon, p["position"]["latitude"], p["position"]["longitude"])
    errors.append(float(np.hypot(east, north)))
median_km = float(np.median(errors)) / 1000
assert len(predictions) == 20 and median_km < 60, median_km
result = {
    "containerize_seconds": build_s,
    "image_bytes": size,
    "base_image_bytes": base_size,
    "added_bytes": size - base_size,
    "user": user,
    "compilers_or_git": [],
    "top_packages_mb": {name.rsplit("/", 1)[-1]: int(mb) for mb, name in top},
    "median_error_km": round(median_km, 1),
    "before": {"image_bytes": 1502605385, "note": "BentoML's Debian template, build-essential and git"},
}
print(json.dumps(result))
open("benchmarks/results/container.json", "w").write(json.dumps(result, indent=2) + "\n")
PYCHECK

# The pod security of deploy/k8s/deployment.yaml, with podman: read-only root filesystem, a
# writable /tmp only, no capabilities, no privilege escalation. The image finds its bento at
# $BENTO_PATH (/home/bentoml/bento) whatever BENTOML_HOME is; BENTOML_HOME (the image's default
# /home/bentoml) is where BentoML creates its store folders and Prometheus files at start.
log "read-only run"
podman rm -f rf-localization-test >/dev/null 2>&1 || true
podman rm -f rf-localization-ro >/dev/null 2>&1 || true
if curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz"; then echo "port $PORT still answers"; exit 1; fi
read_only=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)
# first without BENTOML_HOME, to record whether it is needed: exits at start, or serves
podman run -d --name rf-localization-ro --network host "${read_only[@]}" \
  -e BENTOML_PORT="$PORT" -e SERVICE_WORKERS=1 "$IMAGE" serve --port "$PORT" >/dev/null
if exit_code=$(timeout 60 podman wait rf-localization-ro); then
  default_home="exits with code $exit_code: $(podman logs rf-localization-ro 2>&1 | grep -m1 -E '^[A-Za-z]*Error' || true)"
else
  default_home="serves"
fi
echo "without BENTOML_HOME: $default_home"
podman rm -f rf-localization-ro >/dev/null 2>&1 || true
podman run -d --name rf-localization-ro --network host "${read_only[@]}" -e BENTOML_HOME=/tmp/bentoml \
  -e BENTOML_PORT="$PORT" -e SERVICE_WORKERS=1 "$IMAGE" serve --port "$PORT" >/dev/null
started=$(date +%s)  # after `podman run` returns: with vfs storage, creating a container copies the image
wait_ready "$PORT"
ready_s=$(( $(date +%s) - started ))
writes=$(podman exec rf-localization-ro sh -c 'cd /tmp && ls -d *')
"$PY" - "$PORT" "${read_only[*]}" "$default_home" "$ready_s" "$writes" <<'PYREADONLY'
import base64, json, re, sys, urllib.request
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

port, flags, default_home, ready_s, writes = sys.argv[1:]
iq = generate_scenes(1, seed=4711, spec=FeatureSpec()).iq[0]
body = {"iq_b64": base64.b64encode(iq.astype("<c8").tobytes()).decode()}
req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as response:
    status, answer = response.status, json.loads(response.read())
assert status == 200 and "position" in answer, (status, answer)
path = "benchmarks/results/container.json"
result = json.load(open(path))
result["read_only_run"] = True
result["read_only"] = {
    "flags": flags,
    "needs": {"env": {"BENTOML_HOME": "/tmp/bentoml"}, "writable": ["/tmp (tmpfs)"]},
    "without_bentoml_home": default_home,
    "ready_seconds_after_start": int(ready_s),
    "predict_status": status,
    "predict_quality": answer["quality"],
    "tmp_contents": sorted(re.sub(r"-[a-z0-9_]{8}$", "-*", name) for name in writes.split()),
}
print(json.dumps(result["read_only"]))
open(path, "w").write(json.dumps(result, indent=2) + "\n")
PYREADONLY
[ "$(podman inspect -f '{{.State.Running}}' rf-localization-ro)" = true ]
log "container-test passed"
