#!/usr/bin/env bash
# Load benchmark: direct-to-mock vs nginx reverse proxy vs deltallm-gateway.
#
#   bash bench/run.sh
#
# Starts (all on 127.0.0.1): an nginx mock upstream (fixed chat.completion
# JSON and a fixed SSE body), an nginx reverse proxy to it (the baseline) and
# the gateway in release mode, then drives each with wrk at concurrency 1 and
# 32, non-streaming and streaming. Load generator and mock run on one core,
# the proxy under test on the other. Prints a Markdown report and writes raw
# results to bench/results/<timestamp>/. See docs/benchmarks.md.
#
# Knobs (environment): BENCH_DURATION (s, default 10), BENCH_WARMUP (s, 2),
# BENCH_CONCURRENCY ("1 32"), BENCH_MODES ("json sse"; "json-tls sse-tls" put the mock
# behind HTTPS, with a private CA that nginx and the gateway are told to trust),
# BENCH_TARGETS ("direct nginx gateway"; ratios need all three), BENCH_PORT_BASE (18800),
# BENCH_LOADGEN_CPU (0), BENCH_PROXY_CPU (1), BENCH_SKIP_BUILD=1,
# BENCH_OVERHEAD_SECONDS (3; 0 skips the x-deltallm-overhead-us sampling),
# BENCH_KEEP_RUNDIR=1 (keep configs and gateway data), BENCH_CALLGRIND=1 (instructions
# per request under valgrind instead of timings: repeatable on a noisy machine), CARGO_TARGET_DIR,
# BENCH_CALLGRIND_CACHE=1 (with BENCH_CALLGRIND=1: callgrind's cache simulation, misses per request),
# BENCH_GATEWAY_BIN (use this binary instead of building one), BENCH_MAX_STEAL (%, 5: a
# round whose rows lost more of the proxy core to the hypervisor counts for no verdict),
# BENCH_ROUNDS (3: every row is measured this many times, the targets taking turns within
# a round; each ratio is the median of its rounds' ratios).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 32"}
MODES=${BENCH_MODES:-"json sse"}
TARGETS=${BENCH_TARGETS:-"direct nginx gateway"}
PORT_BASE=${BENCH_PORT_BASE:-18800}
LOADGEN_CPU=${BENCH_LOADGEN_CPU:-0}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
OVERHEAD_SECONDS=${BENCH_OVERHEAD_SECONDS:-3}
MAX_STEAL=${BENCH_MAX_STEAL:-5}
ROUNDS=${BENCH_ROUNDS:-3}
MOCK_PORT=$((PORT_BASE + 1))
PROXY_PORT=$((PORT_BASE + 2))
GW_PORT=$((PORT_BASE + 3))
MOCK_TLS_PORT=$((PORT_BASE + 4))
TLS=0
for mode in $MODES; do
  case $mode in
    json | sse) ;;
    json-tls | sse-tls) TLS=1 ;;
    *) echo "error: unknown mode '$mode' in BENCH_MODES (json, sse, json-tls, sse-tls)" >&2; exit 2 ;;
  esac
done

for v in DURATION WARMUP OVERHEAD_SECONDS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} > 600)); then
    echo "error: BENCH_$v must be an integer number of seconds ≤ 600" >&2
    exit 2
  fi
done
if ! [[ $ROUNDS =~ ^[1-9]$ ]]; then
  echo "error: BENCH_ROUNDS must be a whole number from 1 to 9" >&2
  exit 2
fi
if ! [[ $MAX_STEAL =~ ^[0-9]+$ ]] || ((MAX_STEAL > 100)); then
  echo "error: BENCH_MAX_STEAL must be an integer percentage ≤ 100" >&2
  exit 2
fi

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools ---
apt_install() {
  [[ $(id -u) == 0 ]] || die "missing $*; install it (apt-get install -y $*) or run as root"
  log "installing $* (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q "$@" >/dev/null 2>&1
}

NGINX=$(command -v nginx || true)
[[ -n $NGINX ]] || { [[ -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx; } || true
if [[ -z $NGINX ]]; then
  apt_install nginx-light || apt_install nginx || die "cannot install nginx"
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk"
command -v curl >/dev/null || apt_install curl || die "cannot install curl"
command -v taskset >/dev/null || apt_install util-linux || die "cannot find taskset"
if ((TLS)); then command -v openssl >/dev/null || apt_install openssl || die "cannot install openssl"; fi
CALLGRIND=${BENCH_CALLGRIND:-0}
if [[ $CALLGRIND == 1 ]]; then
  command -v valgrind >/dev/null || apt_install valgrind || die "cannot install valgrind"
fi
[[ $(nproc --all) -ge 2 ]] || log "warning: fewer than 2 CPUs; pinning cannot separate load generator and proxy"

# ---------------------------------------------------------------- build ---
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAY_BIN=${BENCH_GATEWAY_BIN:-$TARGET_DIR/release/deltallm-gateway}
if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_GATEWAY_BIN:-} ]]; then
  log "building deltallm-gateway (release)"
  (cd "$ROOT" && cargo build --release -p deltallm-gateway)
fi
[[ -x $GATEWAY_BIN ]] || die "no gateway binary at $GATEWAY_BIN"

# ---------------------------------------------------------- run dir/trap ---
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$HERE/results/$STAMP
mkdir -p "$OUT"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/deltallm-bench.XXXXXX")
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    # bounded wait, then force
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ ${BENCH_KEEP_RUNDIR:-0} == 1 ]]; then log "run dir kept: $RUN"; else rm -rf "$RUN"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for port in "$MOCK_PORT" "$PROXY_PORT" "$GW_PORT" "$MOCK_TLS_PORT"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    die "port $port is already in use (set BENCH_PORT_BASE)"
  fi
done

# ------------------------------------------------------------ mock bodies ---
# Fixed upstream answers. No ' \ or $ in them: they are pasted into nginx config.
MOCK_JSON='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-json","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a fixed answer from the benchmark mock upstream."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}}'
sse_chunk() { # $1 = delta JSON, $2 = finish_reason
  printf '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-sse","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}' "$1" "$2"
}
MOCK_SSE=""
for ev in \
  "$(sse_chunk '{"role":"assistant","content":""}' null)" \
  "$(sse_chunk '{"content":"Hello!"}' null)" \
  "$(sse_chunk '{"content":" This is a fixed"}' null)" \
  "$(sse_chunk '{"content":" answer from the"}' null)" \
  "$(sse_chunk '{"content":" benchmark mock."}' null)" \
  "$(sse_chunk '{}' '"stop"')" \
  '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench-sse","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}' \
  '[DONE]'; do
  MOCK_SSE+="data: $ev\\n\\n"
done

# Client bodies: identical bytes for every target (the gateway's model names
# equal the upstream model ids).
printf '%s' '{"model":"bench-json","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0.2}' >"$RUN/body-json.json"
printf '%s' '{"model":"bench-sse","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"temperature":0.2,"stream":true}' >"$RUN/body-sse.json"

for mode in json sse; do
  sed "s/\"model\":\"bench-$mode\"/\"model\":\"bench-$mode-tls\"/" "$RUN/body-$mode.json" >"$RUN/body-$mode-tls.json"
done

# A private CA and a certificate for 127.0.0.1 signed by it, for the HTTPS mock.
if ((TLS)); then
  (
    cd "$RUN"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout mock.key -out mock.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >mock.ext
    openssl x509 -req -in mock.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile mock.ext -out mock.pem
  ) >"$OUT/openssl.log" 2>&1 || die "cannot make the benchmark's certificates (see $OUT/openssl.log)"
fi

# --------------------------------------------------------- nginx configs ---
USER_LINE=""
[[ $(id -u) == 0 ]] && USER_LINE="user root;"
nginx_common() { # $1 = name
  mkdir -p "$RUN/$1-tmp"
  cat <<EOF
$USER_LINE
worker_processes 1;
daemon off;
pid $RUN/$1.pid;
error_log $RUN/$1-error.log warn;
events { worker_connections 4096; multi_accept on; }
EOF
}
nginx_http_common() { # $1 = name
  cat <<EOF
  access_log off;
  client_body_temp_path $RUN/$1-tmp/body;
  proxy_temp_path $RUN/$1-tmp/proxy;
  fastcgi_temp_path $RUN/$1-tmp/fastcgi;
  uwsgi_temp_path $RUN/$1-tmp/uwsgi;
  scgi_temp_path $RUN/$1-tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
EOF
}

mock_locations() {
  cat <<EOF
    location = /v1/chat/completions {
      default_type application/json;
      return 200 '$MOCK_JSON';
    }
    location = /sse/v1/chat/completions {
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      return 200 '$MOCK_SSE';
    }
    location = /v1/models { default_type application/json; return 200 '{"object":"list","data":[]}'; }
    location / { return 404; }
EOF
}
{
  nginx_common mock
  echo "http {"
  nginx_http_common mock
  echo "  server {"
  echo "    listen 127.0.0.1:$MOCK_PORT backlog=4096;"
  mock_locations
  echo "  }"
  if ((TLS)); then
    echo "  server {"
    echo "    listen 127.0.0.1:$MOCK_TLS_PORT ssl backlog=4096;"
    echo "    ssl_certificate $RUN/mock.pem;"
    echo "    ssl_certificate_key $RUN/mock.key;"
    mock_locations
    echo "  }"
  fi
  echo "}"
} >"$RUN/mock.conf"

{
  nginx_common proxy
  echo "http {"
  nginx_http_common proxy
  cat <<EOF
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  upstream mock_tls {
    server 127.0.0.1:$MOCK_TLS_PORT;
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$PROXY_PORT backlog=4096;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location = /v1/chat/completions {
      proxy_pass http://mock;
    }
    location = /sse/v1/chat/completions {
      proxy_pass http://mock;
      proxy_buffering off;
    }
EOF
  if ((TLS)); then
    cat <<EOF
    # The HTTPS mock: verified against the private CA, TLS sessions reused
    # on the pooled keep-alive connections.
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate $RUN/ca.pem;
    proxy_ssl_name localhost;
    proxy_ssl_session_reuse on;
    location = /tls/v1/chat/completions {
      proxy_pass https://mock_tls/v1/chat/completions;
    }
    location = /tls/sse/v1/chat/completions {
      proxy_pass https://mock_tls/sse/v1/chat/completions;
      proxy_buffering off;
    }
EOF
  fi
  echo "  }"
  echo "}"
} >"$RUN/proxy.conf"

"$NGINX" -t -q -c "$RUN/mock.conf" -p "$RUN" || die "mock nginx config invalid"
"$NGINX" -t -q -c "$RUN/proxy.conf" -p "$RUN" || die "proxy nginx config invalid"
cp "$RUN/mock.conf" "$RUN/proxy.conf" "$OUT/"

wait_http() { # $1 = url; up to ~10 s
  for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- start ---
log "starting nginx mock on cpu $LOADGEN_CPU (:$MOCK_PORT), nginx proxy on cpu $PROXY_CPU (:$PROXY_PORT)"
taskset -c "$LOADGEN_CPU" "$NGINX" -c "$RUN/mock.conf" -p "$RUN" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
taskset -c "$PROXY_CPU" "$NGINX" -c "$RUN/proxy.conf" -p "$RUN" &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/" || die "mock did not start"
wait_http "http://127.0.0.1:$PROXY_PORT/" || die "nginx proxy did not start"

# The gateway pinned to one core: tokio sizes its worker pool from the CPU
# affinity mask, so it runs one worker thread (plus SQLite/blocking threads),
# the same single core nginx's one worker gets.
log "starting gateway on cpu $PROXY_CPU (:$GW_PORT)"
mkdir -p "$RUN/gw-data"
GW_WRAP=()
CACHE_SIM=${BENCH_CALLGRIND_CACHE:-0}
[[ $CALLGRIND == 1 ]] && GW_WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out")
[[ $CALLGRIND == 1 && $CACHE_SIM == 1 ]] && GW_WRAP=(valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$OUT/callgrind.out")
GW_ENV=()
if ((TLS)); then
  # The gateway trusts the private CA the way an operator would set it up.
  printf 'general_settings:\n  upstream_ca_bundle: %s\n' "$RUN/ca.pem" >"$RUN/gw-config.yaml"
  GW_ENV=(DELTALLM_CONFIG_PATH="$RUN/gw-config.yaml")
fi
env "${GW_ENV[@]}" NO_COLOR=1 DELTALLM_HOST=127.0.0.1 DELTALLM_PORT="$GW_PORT" DELTALLM_DATA_DIR="$RUN/gw-data" \
  taskset -c "$PROXY_CPU" "${GW_WRAP[@]}" "$GATEWAY_BIN" >"$OUT/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
started=0
for _ in $(seq 6); do # up to ~60 s under valgrind
  wait_http "http://127.0.0.1:$GW_PORT/health/liveliness" && { started=1; break; }
  [[ $CALLGRIND == 1 ]] || break
done
((started)) || die "gateway did not start (see $OUT/gateway.log)"
for _ in $(seq 100); do [[ -s $RUN/gw-data/master_key ]] && break; sleep 0.1; done
KEY=$(tr -d '\n' <"$RUN/gw-data/master_key")
[[ -n $KEY ]] || die "no master key in $RUN/gw-data/master_key"

add_model() { # $1 = model name, $2 = api_base
  local code
  code=$(curl -s -o "$OUT/create-$1.json" -w '%{http_code}' --max-time 10 -X POST \
    "http://127.0.0.1:$GW_PORT/ui/api/models" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "{\"model_name\":\"$1\",\"deltallm_params\":{\"provider\":\"vllm\",\"model\":\"$1\",\"api_base\":\"$2\"}}")
  [[ $code == 2* ]] || die "creating deployment $1 failed: HTTP $code $(cat "$OUT/create-$1.json")"
}
add_model bench-json "http://127.0.0.1:$MOCK_PORT/v1"
add_model bench-sse "http://127.0.0.1:$MOCK_PORT/sse/v1"
if ((TLS)); then
  add_model bench-json-tls "https://127.0.0.1:$MOCK_TLS_PORT/v1"
  add_model bench-sse-tls "https://127.0.0.1:$MOCK_TLS_PORT/sse/v1"
fi

url_of() { # $1 = target, $2 = mode
  local path=/v1/chat/completions
  [[ $2 == sse* ]] && path=/sse/v1/chat/completions
  case $1 in
    direct) if [[ $2 == *-tls ]]; then echo "https://127.0.0.1:$MOCK_TLS_PORT$path"; else echo "http://127.0.0.1:$MOCK_PORT$path"; fi ;;
    nginx) if [[ $2 == *-tls ]]; then echo "http://127.0.0.1:$PROXY_PORT/tls$path"; else echo "http://127.0.0.1:$PROXY_PORT$path"; fi ;;
    # The gateway routes on the body's model.
    gateway) echo "http://127.0.0.1:$GW_PORT/v1/chat/completions" ;;
  esac
}

# Smoke test every target/mode; the gateway registry may take a moment.
CURL_TLS=()
((TLS)) && CURL_TLS=(--cacert "$RUN/ca.pem")
for target in direct nginx gateway; do
  for mode in $MODES; do
    ok=0
    for _ in $(seq 50); do
      if curl -s --max-time 5 "${CURL_TLS[@]}" -o "$OUT/smoke-$target-$mode.txt" -D "$OUT/smoke-$target-$mode.headers" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        --data-binary "@$RUN/body-$mode.json" "$(url_of "$target" "$mode")" &&
        grep -q '^HTTP/1.1 200' "$OUT/smoke-$target-$mode.headers" &&
        if [[ $mode == sse* ]]; then grep -q '^data: \[DONE\]' "$OUT/smoke-$target-$mode.txt"; else grep -q '"chat.completion"' "$OUT/smoke-$target-$mode.txt"; fi; then
        ok=1
        break
      fi
      sleep 0.1
    done
    ((ok)) || die "smoke test failed for $target/$mode (see $OUT/smoke-$target-$mode.*)"
  done
done
log "smoke tests passed"


# ------------------------------------------------------------- measuring ---
CLK_TCK=$(getconf CLK_TCK)
proc_pids() { # $1 = target → pids whose CPU counts
  case $1 in
    direct) ;;
    nginx) echo "$PROXY_PID"; pgrep -P "$PROXY_PID" || true ;;
    gateway) echo "$GW_PID" ;;
  esac
}
cpu_ticks() { # "utime+stime stime" summed over the given pids (all threads, incl. exited ones)
  local total=0 sys=0 p t s
  for p in "$@"; do
    read -r t s < <(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13, $13}') || { t=0; s=0; }
    total=$((total + t))
    sys=$((sys + s))
  done
  echo "$total $sys"
}
spend_ns() { # CPU time (ns, schedstat) of the gateway's SQLite spend writer thread; 0 if none
  local t comm
  for t in /proc/"$GW_PID"/task/*; do
    read -r comm <"$t/comm" 2>/dev/null || continue
    if [[ $comm == deltallm-spend ]]; then
      awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0
      return
    fi
  done
  echo 0
}
spend_dropped() { # spend records the gateway dropped so far (queue full), from its spend summary
  # An empty time range: the counters without reading spend rows (which would
  # fill a pool connection's page cache and show up as peak RSS).
  curl -fsS --max-time 30 -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$GW_PORT/ui/api/spend/summary?from=2999-01-01" 2>/dev/null |
    grep -o '"queue_full":[0-9]*' | cut -d: -f2 || echo 0
}
peak_kib() { # max VmHWM over the given pids
  local max=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    ((v > max)) && max=$v
  done
  echo "$max"
}
reset_peak() { # make VmHWM per run (Linux ≥ 4.0); harmless if unsupported
  local p
  for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}
core_busy() { # "busy total steal" jiffies for cpu $1; busy excludes time the hypervisor stole
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6 - $9, t, $9 }' /proc/stat
}

run_wrk() { # $1 = label, $2 = url, $3 = body file, $4 = conc, $5 = seconds, $6 = script
  BENCH_BODY_FILE=$3 BENCH_AUTH=$KEY BENCH_LABEL=$1 \
    timeout $(($5 + 30)) taskset -c "$LOADGEN_CPU" wrk -t1 -c"$4" -d"$5"s --timeout 5s -s "$6" "$2"
}

# ---------------------------------------------------- instruction counts ---
# Under callgrind the gateway runs ~50x slower, so only the count per request
# means anything: user-space instructions of all its threads (the SQLite
# thread included), not kernel time. Counters are zeroed after a warm-up and
# dumped after the spend writer's linger, so the window holds the requests'
# own work. Same binary and inputs give the same figure within about 1 %.
if [[ $CALLGRIND == 1 ]]; then
  command -v callgrind_control >/dev/null || die "callgrind_control not found (valgrind)"
  C=${BENCH_CALLGRIND_CONCURRENCY:-32}
  {
    if [[ $CACHE_SIM == 1 ]]; then
      echo "| mode | c | requests | instructions | instructions per request | L1 data misses per request | last-level misses per request |"
      echo "|---|---:|---:|---:|---:|---:|---:|"
    else
      echo "| mode | c | requests | instructions | instructions per request |"
      echo "|---|---:|---:|---:|---:|"
    fi
  } >"$OUT/instructions.md"
  for mode in $MODES; do
    label="gateway-$mode-c$C"
    log "counting instructions for $label (${WARMUP}s warm-up + ${DURATION}s)"
    run_wrk "$label-warmup" "$(url_of gateway "$mode")" "$RUN/body-$mode.json" "$C" "$WARMUP" "$HERE/wrk-post.lua" \
      >"$OUT/$label-warmup.txt" 2>&1 || true
    sleep 0.5
    callgrind_control -z "$GW_PID" >/dev/null 2>&1
    run_wrk "$label" "$(url_of gateway "$mode")" "$RUN/body-$mode.json" "$C" "$DURATION" "$HERE/wrk-post.lua" \
      >"$OUT/$label.txt" 2>&1 || die "wrk failed for $label (see $OUT/$label.txt)"
    sleep 0.5 # the spend writer flushes after 200 ms without new records
    callgrind_control -d "$GW_PID" >/dev/null 2>&1
    dump=$(ls -t "$OUT"/callgrind.out.* | head -n1)
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    reqs=$(grep '^RESULT ' "$OUT/$label.txt" | tr ' ' '\n' | awk -F= '$1 == "requests" {print $2}')
    [[ -n $ir && ${reqs:-0} -gt 0 ]] || die "no instruction count or requests for $label"
    mv "$dump" "$OUT/callgrind-$label.out"
    if [[ $CACHE_SIM == 1 ]]; then
      # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw (callgrind's order with --cache-sim=yes)
      awk -v mode="$mode" -v c="$C" -v reqs="$reqs" '/^events:/ { for (i = 2; i <= NF; i++) name[i] = $i }
        /^(summary|totals):/ { for (i = 2; i <= NF; i++) v[name[i]] = $i;
          printf "| %s | %s | %s | %s | %d | %.1f | %.2f |\n", mode, c, reqs, v["Ir"], v["Ir"] / reqs,
            (v["D1mr"] + v["D1mw"]) / reqs, (v["ILmr"] + v["DLmr"] + v["DLmw"]) / reqs; exit }' \
        "$OUT/callgrind-$label.out" >>"$OUT/instructions.md"
    else
      printf '| %s | %s | %s | %s | %s |\n' "$mode" "$C" "$reqs" "$ir" "$((ir / reqs))" >>"$OUT/instructions.md"
    fi
  done
  cat "$OUT/instructions.md"
  log "raw results: $OUT (callgrind_annotate --inclusive=yes $OUT/callgrind-<label>.out for a profile)"
  exit 0
fi

# Background load: other processes on the machine skew every figure.
read -r bl0 blt0 _ < <(core_busy "$LOADGEN_CPU")
read -r bp0 bpt0 _ < <(core_busy "$PROXY_CPU")
sleep 2
read -r bl1 blt1 _ < <(core_busy "$LOADGEN_CPU")
read -r bp1 bpt1 _ < <(core_busy "$PROXY_CPU")
BG_LOAD="cpu$LOADGEN_CPU $((100 * (bl1 - bl0) / (blt1 - blt0 + 1)))%, cpu$PROXY_CPU $((100 * (bp1 - bp0) / (bpt1 - bpt0 + 1)))% busy while idle; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
log "background load before measuring: $BG_LOAD"
if (((bl1 - bl0) * 100 > 10 * (blt1 - blt0 + 1) || (bp1 - bp0) * 100 > 10 * (bpt1 - bpt0 + 1))); then
  log "warning: the machine is not idle; figures will be noisy"
fi

RAW=$OUT/raw.tsv
printf 'target\tmode\tc\trequests\tduration_us\terrors\trps\tmean_us\tp50_us\tp90_us\tp99_us\tp999_us\tcpu_us_per_req\tpeak_rss_kib\tcore%s_busy_pct\tcore%s_busy_pct\tcore%s_steal_pct\tcore%s_steal_pct\tkernel_pct\tspend_writer_us_per_req\tspend_records_dropped\tround\n' \
  "$LOADGEN_CPU" "$PROXY_CPU" "$LOADGEN_CPU" "$PROXY_CPU" >"$RAW"

measure() { # $1 = target, $2 = mode, $3 = concurrency, $4 = round
  local target=$1 mode=$2 c=$3 round=$4 label="$1-$2-c$3-r$4" url body pids
  url=$(url_of "$target" "$mode")
  body=$RUN/body-$mode.json
  mapfile -t pids < <(proc_pids "$target")
  log "measuring $label (round $round of $ROUNDS: ${WARMUP}s warm-up + ${DURATION}s)"
  if ((WARMUP > 0)); then
    run_wrk "$label-warmup" "$url" "$body" "$c" "$WARMUP" "$HERE/wrk-post.lua" >"$OUT/$label-warmup.txt" 2>&1 || true
  fi
  local t0 t1 l0 l1 p0 p1 peak=0 s0 s1 w0=0 w1=0 q0=0 q1=0
  [[ $target == gateway ]] && q0=$(spend_dropped)
  ((${#pids[@]})) && reset_peak "${pids[@]}"
  [[ $target == gateway ]] && w0=$(spend_ns)
  read -r t0 s0 < <( ((${#pids[@]})) && cpu_ticks "${pids[@]}" || echo 0 0)
  local ls0 ls1 ps0 ps1
  read -r l0 lt0 ls0 < <(core_busy "$LOADGEN_CPU")
  read -r p0 pt0 ps0 < <(core_busy "$PROXY_CPU")
  run_wrk "$label" "$url" "$body" "$c" "$DURATION" "$HERE/wrk-post.lua" >"$OUT/$label.txt" 2>&1 ||
    die "wrk failed for $label (see $OUT/$label.txt)"
  read -r t1 s1 < <( ((${#pids[@]})) && cpu_ticks "${pids[@]}" || echo 0 0)
  [[ $target == gateway ]] && w1=$(spend_ns)
  read -r l1 lt1 ls1 < <(core_busy "$LOADGEN_CPU")
  read -r p1 pt1 ps1 < <(core_busy "$PROXY_CPU")
  ((${#pids[@]})) && peak=$(peak_kib "${pids[@]}")
  [[ $target == gateway ]] && q1=$(spend_dropped)
  local line
  line=$(grep '^RESULT ' "$OUT/$label.txt") || die "no result line for $label"
  awk -v line="$line" -v target="$target" -v mode="$mode" -v c="$c" -v ticks=$((t1 - t0)) -v sticks=$((s1 - s0)) -v hz="$CLK_TCK" \
    -v haspids="${#pids[@]}" -v peak="$peak" -v spendns=$((w1 - w0)) -v spenddrop=$(( ${q1:-0} - ${q0:-0} )) -v isgw=$([[ $target == gateway ]] && echo 1 || echo 0) \
    -v lb=$((l1 - l0)) -v lt=$((lt1 - lt0)) -v pb=$((p1 - p0)) -v pt=$((pt1 - pt0)) \
    -v lst=$((ls1 - ls0)) -v pst=$((ps1 - ps0)) -v round="$round" 'BEGIN {
      n = split(line, kv, " ");
      for (i = 2; i <= n; i++) { split(kv[i], a, "="); r[a[1]] = a[2] }
      err = r["connect_err"] + r["read_err"] + r["write_err"] + r["status_err"] + r["timeout_err"];
      rps = r["requests"] / (r["duration_us"] / 1e6);
      cpu = (haspids > 0 && r["requests"] > 0) ? sprintf("%.1f", ticks * 1e6 / hz / r["requests"]) : "-";
      pk = (haspids > 0) ? peak : "-";
      kern = (haspids > 0 && ticks > 0) ? sprintf("%.0f", 100 * sticks / ticks) : "-";
      spend = (isgw && r["requests"] > 0) ? sprintf("%.1f", spendns / 1000 / r["requests"]) : "-";
      dropped = isgw ? spenddrop : "-";
      printf "%s\t%s\t%s\t%d\t%d\t%d\t%.0f\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%d\n", target, mode, c,
        r["requests"], r["duration_us"], err, rps, r["mean_us"], r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"],
        cpu, pk, (lt ? 100 * lb / lt : 0), (pt ? 100 * pb / pt : 0), (lt ? 100 * lst / lt : 0), (pt ? 100 * pst / pt : 0), kern, spend, dropped, round
    }' >>"$RAW"
  if [[ $(tail -n1 "$RAW" | cut -f6) != 0 ]]; then
    log "warning: $label had errors or non-2xx responses (see $OUT/$label.txt)"
  fi
}

# Rounds outermost: a slow spell of the host lands in one round's rows of
# every target rather than in all rows of one target.
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    for c in $CONCURRENCY; do
      for target in $TARGETS; do
        measure "$target" "$mode" "$c" "$round"
      done
    done
  done
done

GW_PEAK_TOTAL=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status")
GW_THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$GW_PID/status")

# Gateway overhead header, sampled in short separate runs (wrk's response()
# hook costs load-generator CPU, so the measured runs above do not use it).
OVERHEAD_FILE=$OUT/overhead.txt
: >"$OVERHEAD_FILE"
if ((OVERHEAD_SECONDS > 0)); then
  for mode in $MODES; do
    for c in $CONCURRENCY; do
      label="gateway-$mode-c$c"
      log "sampling x-deltallm-overhead-us for $label (${OVERHEAD_SECONDS}s)"
      run_wrk "$label" "$(url_of gateway "$mode")" "$RUN/body-$mode.json" "$c" "$OVERHEAD_SECONDS" \
        "$HERE/wrk-overhead.lua" >"$OUT/overhead-$label.txt" 2>&1 || true
      grep '^OVERHEAD ' "$OUT/overhead-$label.txt" >>"$OVERHEAD_FILE" || true
    done
  done
fi

# ---------------------------------------------------------------- report ---
REPORT=$OUT/report.md
{
  echo "# DeltaLLM load benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc --all) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo);" \
    "kernel $(uname -r); $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}');" \
    "gateway $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates bins 2>/dev/null || echo '+dirty')."
  echo "wrk -t1 and the nginx mock on cpu $LOADGEN_CPU; proxy under test on cpu $PROXY_CPU." \
    "${WARMUP}s warm-up + ${DURATION}s per row, $ROUNDS round(s). Gateway: $GW_THREADS threads at the end, 1 tokio worker (affinity = 1 CPU)."
  echo "Background load before measuring: $BG_LOAD." \
    "Gateway log: $(grep -c 'spend records dropped' "$OUT/gateway.log" || true) spend-queue-full warnings, $(grep -c 'ERROR' "$OUT/gateway.log" || true) errors."
  echo
  awk -F'\t' -v lc="$LOADGEN_CPU" -v pc="$PROXY_CPU" 'NR == 1 { next }
    { key = $1 SUBSEP $2 SUBSEP $3; rps[key] = $7; p50[key] = $9; cpu[key] = $13; peak[key] = $14; rows[++n] = $0 }
    function ms(us) { return sprintf("%.3f", us / 1000) }
    function mib(k) { return k == "-" ? "-" : sprintf("%.1f", k / 1024) }
    END {
      print "| round | target | mode | c | req/s | p50 ms | p99 ms | CPU µs/req | of it kernel | of it spend writer µs | spend records dropped | peak RSS MiB | errors | cpu" lc " busy | cpu" pc " busy | cpu" pc " stolen |";
      print "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
      for (i = 1; i <= n; i++) {
        split(rows[i], f, "\t");
        printf "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %d | %d%% | %d%% | %d%% |\n",
          f[22], f[1], f[2], f[3], f[7], ms(f[9]), ms(f[11]), f[13], (f[19] == "-" ? "-" : f[19] "%"), f[20], f[21], mib(f[14]), f[6], f[15], f[16], f[18]
      }
    }' "$RAW"
  echo
  echo "## Ratios (same run)"
  echo
  echo "Added p50 = p50(proxy) − p50(direct) at the same mode and concurrency. Each ratio is worked out"
  echo "within one round (the three targets measured back to back); the verdict is on the median of"
  echo "the rounds' ratios, listed in brackets. The req/s, ms and µs columns are medians over the same rounds."
  echo
  awk -F'\t' -v gwpeak="$GW_PEAK_TOTAL" -v maxsteal="$MAX_STEAL" -v rounds="$ROUNDS" 'NR == 1 { next }
    { key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $22; rps[key] = $7; p50[key] = $9; cpu[key] = $13; err[key] = $6; st[key] = $18; dr[key] = $21; modes[$2] = 1; cs[$3] = 1 }
    function verdict(ok) { return ok ? "PASS" : "FAIL" }
    # Median of a[1..n] (sorted in place).
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # Why a round cannot count, or "". A round during which the hypervisor
    # took more than maxsteal % of the proxy core measured the host, not the
    # proxy; a gateway row that dropped spend records did less than the full
    # work of a request.
    function excluded(g, x,   s) {
      if (dr[g] != "-" && dr[g] > 0) return sprintf("%d spend records dropped", dr[g]);
      s = st[g] > st[x] ? st[g] : st[x];
      return s > maxsteal ? sprintf("%d%% stolen", s) : ""
    }
    function judge(ok, n, why) { return n > 0 ? verdict(ok) : "no verdict (" why ")" }
    END {
      print "| check | mode | c | gateway | nginx-proxy | direct | ratio | target | result |";
      print "|---|---|---:|---:|---:|---:|---:|---:|---|";
      for (m in modes) for (c in cs) {
        n = 0; nc = 0; why = ""; errs = 0; lt = ""; la = ""; lc = "";
        delete tr; delete gr; delete xr; delete dd; delete ar; delete ga; delete xa; delete dp; delete cr; delete gc; delete xc;
        for (rd = 1; rd <= rounds; rd++) {
          g = "gateway" SUBSEP m SUBSEP c SUBSEP rd; x = "nginx" SUBSEP m SUBSEP c SUBSEP rd; d = "direct" SUBSEP m SUBSEP c SUBSEP rd;
          if (!(g in rps) || !(x in rps) || !(d in rps)) continue;
          errs += err[g] + err[x] + err[d];
          e = excluded(g, x);
          if (e != "") { why = why (why == "" ? "" : "; ") "round " rd ": " e; continue }
          n++;
          tr[n] = rps[x] > 0 ? rps[g] / rps[x] : 0; gr[n] = rps[g]; xr[n] = rps[x]; dd[n] = rps[d];
          ga[n] = p50[g] - p50[d]; xa[n] = p50[x] - p50[d]; dp[n] = p50[d];
          ar[n] = xa[n] > 0 ? ga[n] / xa[n] : 999;
          lt = lt (n > 1 ? ", " : "") sprintf("%.2f", tr[n]); la = la (n > 1 ? ", " : "") sprintf("%.2f", ar[n]);
          if (cpu[g] != "-" && cpu[x] != "-" && cpu[x] > 0) {
            nc++; cr[nc] = cpu[g] / cpu[x]; gc[nc] = cpu[g]; xc[nc] = cpu[x];
            lc = lc (nc > 1 ? ", " : "") sprintf("%.2f", cr[nc])
          }
        }
        if (n == 0 && why == "") continue;
        if (why == "") why = "no round left";
        if (n > 0) {
          r = median(tr, n);
          printf "| throughput | %s | %s | %d req/s | %d req/s | %d req/s | %.2f× nginx [%s], %.2f× direct | ≥ 0.80× nginx | %s |\n",
            m, c, median(gr, n), median(xr, n), median(dd, n), r, lt, median(gr, n) / median(dd, n), (c == 32 ? judge(r >= 0.8, n, why) : "(info)");
          r = median(ar, n);
          printf "| added p50 | %s | %s | +%.3f ms | +%.3f ms | %.3f ms | %.2f× nginx [%s] | ≤ 1.30× nginx | %s |\n",
            m, c, median(ga, n) / 1000, median(xa, n) / 1000, median(dp, n) / 1000, r, la, (c == 1 ? judge(r <= 1.3, n, why) : "(info)");
        } else {
          printf "| throughput | %s | %s | - | - | - | - | ≥ 0.80× nginx | %s |\n", m, c, (c == 32 ? judge(0, 0, why) : "(info)");
          printf "| added p50 | %s | %s | - | - | - | - | ≤ 1.30× nginx | %s |\n", m, c, (c == 1 ? judge(0, 0, why) : "(info)");
        }
        if (nc > 0) {
          r = median(cr, nc);
          printf "| CPU per request | %s | %s | %.1f µs | %.1f µs | - | %.2f× nginx [%s] | ≤ 2.00× nginx | %s |\n",
            m, c, median(gc, nc), median(xc, nc), r, lc, judge(r <= 2.0, nc, why)
        }
        if (errs > 0)
          printf "| errors | %s | %s | %d | - | - | - | 0 | FAIL |\n", m, c, errs
      }
      printf "| peak RSS (VmHWM, whole run) | all | all | %.1f MiB | - | - | - | ≤ 40 MiB | %s |\n", gwpeak / 1024, verdict(gwpeak <= 40 * 1024)
    }' "$RAW" | { read -r h1; read -r h2; echo "$h1"; echo "$h2"; sort -t'|' -k2,2 -k3,3 -k4,4n; }
  if [[ -s $OVERHEAD_FILE ]]; then
    echo
    echo "## Gateway x-deltallm-overhead-us (separate ${OVERHEAD_SECONDS}s sampling runs)"
    echo
    echo "| run | samples | mean µs | p50 µs | p90 µs | p99 µs | max µs |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    awk '{ for (i = 2; i <= NF; i++) { split($i, a, "="); r[a[1]] = a[2] }
           printf "| %s | %s | %s | %s | %s | %s | %s |\n", r["label"], r["samples"], r["mean_us"], r["p50_us"], r["p90_us"], r["p99_us"], r["max_us"] }' "$OVERHEAD_FILE"
  fi
} >"$REPORT"

cat "$REPORT"
log "raw results: $OUT"
