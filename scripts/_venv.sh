# Sourced by scripts/serve and scripts/test: make .venv and install into it
# when it is missing or older than the install inputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEMCACHE_VENV:-$ROOT/.venv}"

ensure_venv() {  # $@: options for install-deps
  local stamp="$VENV/.semcache-install"
  local want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/install-deps" | sha256sum | cut -d' ' -f1) $*"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "semcache: creating $VENV" >&2
    "${PYTHON3:-python3}" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || ! grep -qxF -- "$want" "$stamp"; then
    echo "semcache: installing into $VENV (first run takes a few minutes)" >&2
    PYTHON="$VENV/bin/python" "$ROOT/scripts/install-deps" "$@"
    echo "$want" >> "$stamp"
  fi
}
