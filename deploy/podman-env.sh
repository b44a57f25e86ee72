# Podman on this host, shared by deploy/container-test.sh and deploy/replicas-test.sh (sourced,
# not run): the tools, podman's configuration, the local `python:3.11-slim` base image and the
# bento's image. Expects ROOT (the project folder); sets WORK, PY, IMAGE, BASE and exports
# CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, BENTOML_HOME.
#
# No registry is reachable for base images here, so the `python:3.11-slim` the bento's
# Dockerfile starts FROM is built locally: debootstrap (minbase bookworm, the host's Debian
# mirror) -> podman import -> Debian's python3.11/pip/venv, trusting the host's extra CAs.
WORK=${CONTAINER_WORK:-$ROOT/.container}
PY=${PY:-$ROOT/.venv/bin/python}
IMAGE=${IMAGE:-rf-localization:container-test}
BASE=docker.io/library/python:3.11-slim
mkdir -p "$WORK"
log() { printf '\n== %s\n' "$*"; }

# apt_install TOOL... -- PACKAGE...: install the packages when one of the tools is missing
apt_install() {
  local tools=() missing=0
  while [ "$1" != -- ]; do tools+=("$1"); shift; done
  shift
  for tool in "${tools[@]}"; do command -v "$tool" >/dev/null || missing=1; done
  if ((missing)); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends "$@"
  fi
}

log "tools"
apt_install podman runc debootstrap newuidmap -- podman runc debootstrap uidmap

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

# build_image: build the bento (demo model imported into $WORK/bentoml) and containerize it as
# $IMAGE; sets BENTO_TAG and BUILD_SECONDS
build_image() {
  log "bento"
  export BENTOML_HOME="$WORK/bentoml" BENTOML_DO_NOT_TRACK=True
  "$PY" -m demo.bootstrap --only-embedded
  "$PY" import_model.py
  BENTO_TAG=$("$PY" -m bentoml build . -o tag | tail -1 | sed 's/^__tag__://')
  echo "bento: $BENTO_TAG"

  log "containerize"
  local started
  started=$(date +%s)
  # from $TMPDIR: BentoML 1.4.40 refuses a dockerfile_template outside the working directory,
  # and its build context is a temporary folder
  (cd "${TMPDIR:-/tmp}" && "$PY" -m bentoml containerize --backend podman "$BENTO_TAG" -t "$IMAGE" \
    --opt network=host)
  BUILD_SECONDS=$(( $(date +%s) - started ))
}

# wait_ready PORT [SECONDS]: until the service on 127.0.0.1:PORT answers /readyz with 200
wait_ready() {
  local port=$1 limit=${2:-120}
  for _ in $(seq 1 "$limit"); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    sleep 1
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null
}
