#!/usr/bin/env bash
# Two replicas of the bento's image behind HAProxy, sharing one Redis: `make replicas-test`.
# Proves that
#   1. a prediction made by one replica is a cache hit on the other (replica A's port, then the
#      same body to replica B's port);
#   2. under load through the balancer (CLIENTS clients for LOAD_SECONDS, repeated and fresh
#      bodies), killing one replica mid-load (`podman kill`) costs at most the requests it held
#      in flight, the balancer marks it down within a second or so and the other keeps serving.
# Writes benchmarks/results/replicas.json. Not part of `make test`: run as root on a Debian
# host; it installs podman (deploy/podman-env.sh) and haproxy with apt-get when missing, builds
# the image and starts a dedicated redis-server on REDIS_PORT (stopped at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REDIS_PORT=${REDIS_PORT:-6390}
LB_PORT=${LB_PORT:-3310}
REPLICA_A_PORT=${REPLICA_A_PORT:-3311}
REPLICA_B_PORT=${REPLICA_B_PORT:-3312}
STATS_PORT=${STATS_PORT:-3319}
CLIENTS=${CLIENTS:-16}
LOAD_SECONDS=${LOAD_SECONDS:-20}
# shellcheck source=deploy/podman-env.sh
source deploy/podman-env.sh
apt_install haproxy -- haproxy
haproxy -v | sed -n 1p
redis-server --version

for port in "$REDIS_PORT" "$LB_PORT" "$REPLICA_A_PORT" "$REPLICA_B_PORT" "$STATS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is taken; choose others (REDIS_PORT, LB_PORT, REPLICA_A_PORT, ...)"
    exit 1
  fi
done

if [ "${REUSE_IMAGE:-0}" = 1 ] && podman image exists "$IMAGE"; then
  log "reusing $IMAGE (REUSE_IMAGE=1)"
else
  build_image
fi

REDIS_PID= HAPROXY_PID=
cleanup() {
  [ -z "$HAPROXY_PID" ] || kill "$HAPROXY_PID" 2>/dev/null || true
  for name in rf-replica-a rf-replica-b; do
    podman logs "$name" > "$WORK/$name.log" 2>&1 || true
    podman rm -f "$name" >/dev/null 2>&1 || true
  done
  [ -z "$REDIS_PID" ] || kill "$REDIS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

log "redis on $REDIS_PORT (no persistence)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping

log "replicas a (:$REPLICA_A_PORT) and b (:$REPLICA_B_PORT)"
for replica in a:"$REPLICA_A_PORT" b:"$REPLICA_B_PORT"; do
  name=rf-replica-${replica%%:*} port=${replica#*:}
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman run -d --name "$name" --network host -e BENTOML_PORT="$port" -e SERVICE_WORKERS=1 \
    -e ORT_INTRA_OP_THREADS=1 -e REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    "$IMAGE" serve --port "$port" >/dev/null
done
wait_ready "$REPLICA_A_PORT"
wait_ready "$REPLICA_B_PORT"

log "haproxy on $LB_PORT (stats on $STATS_PORT)"
export LB_PORT STATS_PORT REPLICA_A_PORT REPLICA_B_PORT CLIENTS LOAD_SECONDS
haproxy -c -f deploy/haproxy.cfg
haproxy -db -f deploy/haproxy.cfg > "$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
for _ in $(seq 1 50); do
  [ "$(curl -sf "http://127.0.0.1:$STATS_PORT/;csv" | grep -c '^replicas,[ab],.*,UP,' || true)" = 2 ] && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$STATS_PORT/;csv" | cut -d, -f1,2,18 | grep '^replicas'

log "cross-replica cache, then load with replica a killed mid-way"
"$PY" - <<'PYLOAD'
import base64, json, os, subprocess, sys, threading, time
from collections import Counter
import httpx
import numpy as np
from benchmarks.compare import run_meta
from utils.dsp.feature_spec import FeatureSpec
from utils.dsp.synthetic import generate_scenes

env = os.environ
lb, stats = f"http://127.0.0.1:{env['LB_PORT']}", f"http://127.0.0.1:{env['STATS_PORT']}/;csv"
port_a, port_b = env["REPLICA_A_PORT"], env["REPLICA_B_PORT"]
clients, seconds = int(env["CLIENTS"]), float(env["LOAD_SECONDS"])
kill_at = seconds / 2
load_before = round(os.getloadavg()[0], 2)  # the machine may be busy with other work


def iq_b64(iq) -> str:
    return base64.b64encode(np.ascontiguousarray(iq, dtype="<c8").tobytes()).decode()


def body(iq) -> bytes:
    return json.dumps({"iq_b64": iq_b64(iq)}).encode()


def server_stats() -> dict[str, dict[str, str]]:
    lines = httpx.get(stats, timeout=2).text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
    return {r["svname"]: r for r in rows if r["pxname"] == "replicas"}


scenes = generate_scenes(64, seed=20251, spec=FeatureSpec())
http = httpx.Client(timeout=60)

# 1. a prediction made by replica a is a hit on replica b, and the other way round
cross = []
candidates = iter(scenes.iq)
for first, second in ((port_a, port_b), (port_b, port_a)):
    while True:  # only fixes are cached: take the next scene the model fixes
        b = body(next(candidates))
        one = http.post(f"http://127.0.0.1:{first}/predict", content=b).json()
        if one["quality"] == "fix":
            break
    two = http.post(f"http://127.0.0.1:{second}/predict", content=b).json()
    cross.append({"first_port": int(first), "first_cache_hit": one["cache_hit"],
                  "second_port": int(second), "second_cache_hit": two["cache_hit"],
                  "same_answer": one["position"] == two["position"]})
    print(cross[-1])
    assert one["cache_hit"] is False and two["cache_hit"] is True and cross[-1]["same_answer"], cross[-1]

# 2. the repeated bodies: 16 scenes the model fixes, warmed once through the balancer; the fresh
# ones are a pool scene scaled by (1 + n * 1e-6): new bytes (a new cache key), same physics
pool = []
for iq in scenes.iq[8:]:
    r = http.post(f"{lb}/predict", content=body(iq)).json()
    if r["quality"] == "fix":
        pool.append(iq)
    if len(pool) == 16:
        break
repeated = [body(iq) for iq in pool]
fresh_n = iter(range(1, 10**9))
fresh_lock = threading.Lock()

records = []  # (start, end, kind, status or error, cache_hit, replica)
records_lock = threading.Lock()
stop = threading.Event()
t0 = time.monotonic()


def client(worker: int) -> None:
    rng = np.random.default_rng(worker)
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            if rng.random() < 0.5:
                kind, b = "repeated", repeated[rng.integers(len(repeated))]
            else:
                with fresh_lock:
                    n = next(fresh_n)
                kind = "fresh"
                b = body(pool[n % len(pool)] * np.float32(1 + n * 1e-6))
            start = time.monotonic() - t0
            try:
                r = c.post(f"{lb}/predict", content=b)
                status = r.status_code
                hit = r.json().get("cache_hit") if status == 200 else None
                replica = r.headers.get("x-replica")
            except httpx.HTTPError as exc:
                status, hit, replica = type(exc).__name__, None, None
            with records_lock:
                records.append((start, time.monotonic() - t0, kind, status, hit, replica))


samples = []  # (t, status of a, current sessions on a)


def monitor() -> None:
    while not stop.is_set():
        try:
            a = server_stats()["a"]
            samples.append((time.monotonic() - t0, a["status"], int(a["scur"] or 0)))
        except Exception:  # noqa: BLE001 - a missed sample is only a gap
            pass
        time.sleep(0.05)


before = server_stats()
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
threads.append(threading.Thread(target=monitor))
for t in threads:
    t.start()
time.sleep(kill_at - (time.monotonic() - t0))
in_flight_a = int(server_stats()["a"]["scur"] or 0)
killed = time.monotonic() - t0  # the kill lands while `podman kill` runs: count from its start
subprocess.run(["podman", "kill", "rf-replica-a"], check=True, stdout=subprocess.DEVNULL)
time.sleep(seconds - killed)
stop.set()
for t in threads:
    t.join()
after = server_stats()

down = [t for t, status, _ in samples if t > killed and status.startswith("DOWN")]
marked_down_s = round(down[0] - killed, 2) if down else None
# replica a's sessions in the half second before the kill (HAProxy stats, every 50 ms)
recent_a = max([in_flight_a, *(s for t, _, s in samples if killed - 0.5 <= t < killed)])


def phase(rows):
    ok = [r for r in rows if r[3] == 200]
    return {
        "requests": len(rows),
        "ok": len(ok),
        "errors": len(rows) - len(ok),
        "error_kinds": dict(Counter(str(r[3]) for r in rows if r[3] != 200)),
        "cache_hits": sum(1 for r in ok if r[4]),
        "repeated": sum(1 for r in rows if r[2] == "repeated"),
        "repeated_ok": sum(1 for r in ok if r[2] == "repeated"),
        "repeated_hits": sum(1 for r in ok if r[2] == "repeated" and r[4]),
        "fresh": sum(1 for r in rows if r[2] == "fresh"),
        "fresh_hits": sum(1 for r in ok if r[2] == "fresh" and r[4]),
        "served_by": dict(sorted(Counter(r[5] for r in ok).items())),
        "rps": round(len(ok) / max(1e-9, (max(r[1] for r in rows) - min(r[0] for r in rows))), 1)
        if rows else 0.0,
    }


# a request belongs to "before" when it was answered before the kill, to "after" otherwise
phases = {
    "before_kill": phase([r for r in records if r[1] < killed]),
    "after_kill": phase([r for r in records if r[1] >= killed]),
    "after_marked_down": phase([r for r in records if down and r[0] >= down[0]]),
}
total = phase(records)
# requests sent before the kill and answered after it: the ones replica a may have held; a fresh
# body among them can be a hit when a computed (and cached) it but died before answering and
# HAProxy retried it on b
spanning = [r for r in records if r[0] < killed <= r[1]]


def hrsp(row):
    return sum(int(row[f"hrsp_{k}"] or 0) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))


breaker = {
    name: subprocess.run(["podman", "logs", f"rf-replica-{name}"], capture_output=True, text=True,
                         check=True).stdout.count("serving uncached")
    for name in ("a", "b")
}
result = {
    "meta": run_meta(
        loadavg_1m_before=load_before, replicas=2, workers_per_replica=1, ort_intra_op_threads=1,
        clients=clients, seconds=seconds, kill_at_s=round(killed, 2),
        balancer="haproxy (deploy/haproxy.cfg)",
        note="two podman containers (--network host), one Redis, HAProxy and the load client "
             "on one 2-core machine; repeated bodies warmed once before the load",
    ),
    "cross_replica": cross,
    "load": {
        "total": total,
        **phases,
        "in_flight_on_killed_replica": in_flight_a,
        "sessions_on_killed_replica_last_half_second_max": recent_a,
        "spanning_the_kill": {"requests": len(spanning),
                              "fresh_hits": sum(1 for r in spanning if r[2] == "fresh" and r[4])},
        "marked_down_after_s": marked_down_s,
        "redis_breaker_trips": breaker,
        "haproxy": {
            name: {
                "responses": hrsp(after[name]) - hrsp(before[name]),
                "retries": int(after[name]["wretr"] or 0) - int(before[name]["wretr"] or 0),
                "redispatches": int(after[name]["wredis"] or 0) - int(before[name]["wredis"] or 0),
                "status": after[name]["status"],
            }
            for name in ("a", "b")
        },
    },
}
print(json.dumps(result, indent=2))
json_path = "benchmarks/results/replicas.json"
open(json_path, "w").write(json.dumps(result, indent=2) + "\n")

rows = [("", "requests", "errors", "cache hits", "served by a", "served by b")]
for name in ("before_kill", "after_kill", "total"):
    p = result["load"][name]
    rows.append((name.replace("_", " "), p["requests"], p["errors"], p["cache_hits"],
                 p["served_by"].get("a", 0), p["served_by"].get("b", 0)))
print()
for row in rows:
    print(f"{row[0]:<12}" + "".join(f"{v:>13}" for v in row[1:]))
print(f"replica a killed at {killed:.1f} s with {in_flight_a} requests in flight on it "
      f"(at most {recent_a} in the half second before); "
      f"marked down after {marked_down_s} s")

assert total["fresh_hits"] == result["load"]["spanning_the_kill"]["fresh_hits"], "a fresh body hit"
assert all(r[0] < killed for r in records if r[3] != 200), "a request sent after the kill failed"
assert total["errors"] <= recent_a, "more errors than requests in flight on the killed replica"
assert marked_down_s is not None and marked_down_s < 5, "replica a not marked down"
assert phases["after_marked_down"]["ok"] > 0 and set(phases["after_marked_down"]["served_by"]) == {"b"}
# a repeated body misses only while a replica's Redis circuit breaker is open (utils/serving/cache.py)
assert total["repeated_hits"] >= 0.5 * total["repeated_ok"], "repeated bodies missed the cache"
assert phases["after_marked_down"]["repeated_hits"] > 0, "no cache hits on the surviving replica"
PYLOAD
log "replicas-test passed"
