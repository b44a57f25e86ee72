#!/usr/bin/env bash
# Build the bento's image with podman and prove it serves: /readyz and a correct /predict from
# inside the container. Not part of `make test`: it installs system packages (podman, runc,
# debootstrap, uidmap) and builds a ~1 GB image. Run as root on a Debian host: `make container-test`.
#
# No registry is reachable for base images here, so the `python:3.11-slim` the bento's
# Dockerfile starts FROM is built locally: debootstrap (minbase bookworm, the host's Debian
# mirror) -> podman import -> Debian's python3.11/pip/venv, trusting the host's extra CAs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${CONTAINER_WORK:-$ROOT/.container}
PY=${PY:-$ROOT/.venv/bin/python}
IMAGE=${IMAGE:-rf-localization:container-test}
PORT=${PORT:-3300}
mkdir -p "$WORK"
log() { printf '\n== %s\n' "$*"; }

log "tools"
missing=()
for tool in podman runc debootstrap newuidmap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends \
    podman runc debootstrap uidmap
fi

log "podman configuration (runc, cgroupfs, file events, ulimits within the host's)"
hard_nofile=$(ulimit -Hn)
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "$WORK/run"
graphroot = "$WORK/storage"
CONF
export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
podman --version

BASE=docker.io/library/python:3.11-slim
if ! podman image exists "$BASE"; then
  log "base image $BASE, built locally"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  if [ ! -x "$WORK/rootfs/bin/sh" ]; then
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror"
  fi
  # as slim as the official image: no downloaded .debs, apt lists, docs, man pages or locales
  tar -C "$WORK/rootfs" --exclude='./var/cache/apt/archives/*.deb' \
      --exclude='./var/lib/apt/lists/*' --exclude='./usr/share/doc/*' \
      --exclude='./usr/share/man/*' --exclude='./usr/share/locale/*' -c . \
    | podman import - localhost/debian-bookworm-minbase
  mkdir -p "$WORK/base/ca"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/base/ca/" 2>/dev/null || true
  cat > "$WORK/base/Containerfile" <<CONF
FROM localhost/debian-bookworm-minbase
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3.11 python3-pip python3-venv ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python && ln -sf /usr/bin/python3.11 /usr/local/bin/python3
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
CONF
  podman build --network host -t "$BASE" "$WORK/base"
fi

log "bento"
export BENTOML_HOME="$WORK/bentoml" BENTOML_DO_NOT_TRACK=True
"$PY" -m demo.bootstrap --only-embedded
"$PY" import_model.py
tag=$("$PY" -m bentoml build . -o tag | tail -1 | sed 's/^__tag__://')
echo "bento: $tag"

log "containerize"
started=$(date +%s)
# from $TMPDIR: BentoML 1.4.40 refuses a dockerfile_template outside the working directory,
# and its build context is a temporary folder
(cd "${TMPDIR:-/tmp}" && "$PY" -m bentoml containerize --backend podman "$tag" -t "$IMAGE" \
  --opt network=host)
build_s=$(( $(date +%s) - started ))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')

log "run"
podman rm -f rf-localization-test >/dev/null 2>&1 || true
podman run -d --name rf-localization-test --network host \
  -e BENTOML_PORT="$PORT" -e SERVICE_WORKERS=1 "$IMAGE" serve --port "$PORT" >/dev/null
trap 'podman logs rf-localization-test > "$WORK/container.log" 2>&1 || true; podman rm -f rf-localization-test >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null
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
log "container-test passed"
