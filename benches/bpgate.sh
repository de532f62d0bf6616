# Sourced by benches/vs-nginx, benches/paired and benches/idle-conns: how the benchmarks build and
# start bpgate, so that every one of them measures the same thing.
#
# bpgate runs as in production, on one worker: TLS, HTTP/2, audit trail on (into the harness's
# log dir, so `logB/req` counts it), sticky cookie on with a fixed test secret, CORS on
# (default), new visitors placed by load (default), EXTERNAL_URL set, BPGATE_LOG=warn. Health checks go to
# /api/v1/ping, since the bench nodes answer the default /status with 404 and bpgate would take
# them out. The admin listener takes any free loopback port (two bpgates may run at once).
# shellcheck shell=bash

# The shared harness: ../shared/bench beside the checkout, or BENCH_DIR (e.g. from a git worktree).
BENCH_DIR=${BENCH_DIR:-../shared/bench}

# A fixed 32-character test secret: replicas would share it; here it makes --pin-cookie possible.
STICKY_SECRET=bench-sticky-secret-0123456789ab

# Builds the release binary once and sets BIN to it. CARGO_TARGET_DIR is honoured. With
# BPGATE_BIN set, that binary is measured as it is (no build: a build kept aside while the tree
# moves on).
build_bpgate() {
  if [[ -n ${BPGATE_BIN:-} ]]; then
    [[ -x $BPGATE_BIN ]] || { echo "bench: BPGATE_BIN=$BPGATE_BIN is not an executable" >&2; exit 1; }
    BIN=$(realpath "$BPGATE_BIN")
    return
  fi
  cargo build --release --bin bpgate >&2
  local target_dir=${CARGO_TARGET_DIR:-target}
  [[ $target_dir = /* ]] || target_dir=$PWD/$target_dir
  BIN=$target_dir/release/bpgate
  [[ -x $BIN ]] || { echo "bench: $BIN missing after the build" >&2; exit 1; }
}

# The `--proxy-cmd` that starts bpgate binary $1 the way the harness expects (it reads the
# BENCH_* variables of ../shared/bench/README.md, "Plugging a proxy in"). $2: extra TOML lines
# (printf escapes allowed, e.g. '[audit]\nenabled = false\n'), appended to the bench config.
bpgate_proxy_cmd() {
  local bin=$1 extra=${2:-}
  # Runs in the harness's shell, which sets the BENCH_* variables: single-quoted on purpose.
  # shellcheck disable=SC2016
  printf '%s' '
  printf "[health]\npath = \"/api/v1/ping\"\n'"$extra"'" > "$BENCH_TMP/bpgate.toml"
  BPGATE_CONFIG=$BENCH_TMP/bpgate.toml \
  EXTERNAL_URL=https://localhost:$BENCH_LISTEN_PORT \
  BPGATE_LISTEN=$BENCH_LISTEN_ADDR:$BENCH_LISTEN_PORT \
  BPGATE_TLS_CERT=$BENCH_CERT BPGATE_TLS_KEY=$BENCH_KEY \
  BPGATE_UPSTREAMS=$(echo $BENCH_UPSTREAMS | tr " " ",") \
  BPGATE_AUDIT_DIR=$BENCH_LOG_DIR BPGATE_WORKERS=$BENCH_WORKERS \
  BPGATE_STICKY_SECRET='"$STICKY_SECRET"' \
  BPGATE_ADMIN_LISTEN=127.0.0.1:0 BPGATE_LOG=warn \
  exec '"$(printf %q "$bin")"
}

# The cookie value bpgate would issue for node $1 (`host:port`) now (src/cluster/sticky.rs):
# base64url(01 ‖ id(8) ‖ issued-at u32 BE ‖ tag(16)), where
# id = HMAC-SHA256(secret, "node:" ‖ name)[..8] and
# tag = HMAC-SHA256(secret, "bpgate-sticky-v1" ‖ cookie name ‖ 0x00 ‖ path ‖ first 13 bytes)[..16].
# Valid for sticky.max_age (24 h) and not refreshed before half of it.
sticky_cookie() {
  local node=$1 id body tag
  hmac() { openssl dgst -sha256 -hmac "$STICKY_SECRET" -binary | xxd -p -c 256; }
  id=$(printf 'node:%s' "$node" | hmac | cut -c1-16)
  body=01${id}$(printf '%08x' "$(date +%s)")
  tag=$({ printf 'bpgate-sticky-v1bpgate_node\0/'; printf '%s' "$body" | xxd -r -p; } | hmac | cut -c1-32)
  printf '%s' "$body$tag" | xxd -r -p | base64 -w0 | tr '+/' '-_' | tr -d '='
}

# Installs missing tools from Debian's packages, as ../shared/bench/run does (service start-up
# disabled while installing, so no system nginx appears on port 80). Arguments: command=package.
ensure_tools() {
  local missing=() pair prc=/usr/sbin/policy-rc.d created=0 rc=0
  for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}"); done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || { echo "bench: missing ${missing[*]}; apt-get install them as root" >&2; exit 1; }
  echo "bench: installing ${missing[*]}" >&2
  if [[ ! -e $prc ]]; then printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod +x "$prc" && created=1; fi
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
  ((created)) && rm -f "$prc"
  ((rc == 0)) || { echo "bench: apt-get failed (exit $rc)" >&2; exit 1; }
}
