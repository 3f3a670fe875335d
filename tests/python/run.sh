#!/usr/bin/env bash
# End-to-end tests of the gateway with the official `openai` Python SDK.
#
#   bash tests/python/run.sh [pytest args...]
#
# Creates (or reuses) a venv under $DELTALLM_PY_CACHE (default
# ~/.cache/deltallm-py), installs requirements.txt into it, builds the
# gateway (honours CARGO_TARGET_DIR; skipped when DELTALLM_GATEWAY_BIN is set)
# and runs pytest. Exits non-zero on any failure, including "no tests ran".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

cache="${DELTALLM_PY_CACHE:-${HOME:-/tmp}/.cache/deltallm-py}"
# One venv per (python version, requirements) so a changed pin gets a fresh one.
key="$("$python" - "$here/requirements.txt" <<'PY'
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
h.update(open(sys.argv[1], "rb").read())
print(h.hexdigest()[:16])
PY
)"
venv="$cache/venv-$key"
if [[ ! -f "$venv/.installed" ]]; then
  echo "==> creating venv $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.installed"
else
  echo "==> reusing venv $venv"
fi
"$venv/bin/python" -c 'import openai, pytest; print(f"==> openai {openai.__version__}, pytest {pytest.__version__}")'

if [[ -z "${DELTALLM_GATEWAY_BIN:-}" ]]; then
  echo "==> cargo build -p deltallm-gateway"
  (cd "$repo" && cargo build -q -p deltallm-gateway)
  target="${CARGO_TARGET_DIR:-$repo/target}"
  [[ "$target" = /* ]] || target="$repo/$target"
  export DELTALLM_GATEWAY_BIN="$target/debug/deltallm-gateway"
fi
echo "==> gateway binary $DELTALLM_GATEWAY_BIN"

cd "$here"
set +e
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "tests/python: pytest collected no tests" >&2
  exit 1
fi
exit $status
