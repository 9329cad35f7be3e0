# Shared by scripts/test and scripts/serve: everything is installed from the project's own files.

setup_python() {
  local spec="$1"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
}

setup_node_for_tests() {
  # The test service pins the real Serverless CLI (osls) and its plugins in a committed lockfile.
  local service=tests/service
  [ -f "$service/package-lock.json" ] || return 0
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
      echo "npm is missing: install Node.js 18+ and npm; tests that need them will skip" >&2
      return 0
    fi
  fi
  (cd "$service" && npm ci --no-audit --no-fund --loglevel=error)
}
