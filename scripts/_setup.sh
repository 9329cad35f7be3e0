# Shared by scripts/test, scripts/serve and scripts/demo: everything is installed from the project's own files.

setup_python() {
  local spec="$1"
  if [ ! -x .venv/bin/python ]; then
    # First run: about 80 s of downloads on a fresh machine. Show each package as it comes (errors
    # always pass through), so nobody thinks it hung.
    echo "First run: installing rollback-bot's Python packages into .venv (about a minute and a half; later runs take seconds)…"
    local started=$SECONDS
    python3 -m venv .venv
    if ! (set -o pipefail; .venv/bin/python -m pip install --disable-pip-version-check -e "$spec" 2>&1 \
      | { grep --line-buffered -vE '^ *(Downloading|Using cached|Obtaining|Preparing|Getting requirements|Processing|Installing build|Building|Created wheel|Stored in|Requirement already|Checking if build|Attempting uninstall|Found existing|Uninstalling|Successfully uninstalled)|━' || true; }); then
      echo "pip install failed (above); .venv was removed so the next run starts clean" >&2
      rm -rf .venv
      return 1
    fi
    echo "Python packages installed in $((SECONDS - started)) s."
  fi
  # Later runs reinstall only when pyproject.toml (or the extras asked for) changed: pip takes ~4 s
  # to find that nothing changed, which is most of a quick test run's start.
  local stamp=".venv/.installed-$(cat pyproject.toml <(echo "$spec") | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
  rm -f .venv/.installed-*
  touch "$stamp"
}

apt_install() {
  # Debian packages, when we may install them; otherwise say what is missing and go on.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if [ -z "${_APT_UPDATED:-}" ]; then
      apt-get update -qq
      _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* (install them with your package manager)" >&2
    return 1
  fi
}

setup_sandbox() {
  # bubblewrap: every job's commands (the build's install scripts and plugins) run in it
  command -v bwrap >/dev/null 2>&1 && return 0
  apt_install bubblewrap || echo "bubblewrap is missing: jobs cannot be sandboxed (tests that need it skip)" >&2
}

ensure_node() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
}

# The package managers of the compatibility matrix's projects (tests/projects/, docs/compatibility.md).
YARN_VERSION=1.22.22
PNPM_VERSION=9.15.9

ensure_package_manager() {  # name version: installed globally with npm unless that version is there
  [ "$("$1" --version 2>/dev/null)" = "$2" ] && return 0
  npm install --global --no-audit --no-fund --loglevel=error "$1@$2"
}

install_project() {  # folder: its packages from its committed lockfile, with its own package manager
  local dir=$1
  if [ -f "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  elif [ -f "$dir/yarn.lock" ]; then
    ensure_package_manager yarn "$YARN_VERSION"
    (cd "$dir" && yarn install --frozen-lockfile --non-interactive --silent --no-progress)
  elif [ -f "$dir/pnpm-lock.yaml" ]; then
    ensure_package_manager pnpm "$PNPM_VERSION"
    (cd "$dir" && pnpm install --frozen-lockfile --reporter=silent)
  fi
}

setup_node_for_tests() {
  # The sample service pins the real Serverless CLI (osls) and its plugins in a committed lockfile; each
  # real-world project of the matrix pins its own CLI (Serverless v3 or osls) and plugins the same way.
  local service=bot/playground/sample_service
  [ -f "$service/package-lock.json" ] || return 0
  if ! ensure_node; then
    echo "npm is missing: tests that need Node.js will skip" >&2
    return 0
  fi
  install_project "$service"
  local project
  for project in tests/projects/*/; do
    install_project "${project%/}"
  done
}

setup_browser_for_tests() {
  # Debian's Chromium for the demo's browser test (Playwright drives it; no browser download),
  # and an emoji font so the screenshots show the checklist's marks.
  [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "emoji" && return 0
  apt_install chromium fonts-noto-color-emoji || echo "Chromium is missing: the browser test will skip" >&2
}
