# Shared helpers of the scripts in this folder (sourced, not run).

# ensure_venv SPEC: create .venv (installing python3-venv when root and it is missing) and
# install the package with SPEC (e.g. '.' or '.[test]') into it.
ensure_venv() {
  local py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python 3.11 or newer is needed ($py is $("$py" --version 2>&1))" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt_install "python3-venv"
        "$py" -m venv .venv
      else
        echo "error: '$py -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
        exit 1
      fi
    fi
  fi
  # The install is editable, so code changes need none; only a changed pyproject.toml (or a
  # wider SPEC) does. The stamp holds the hash of pyproject.toml and the SPECs installed with
  # it, so a second run with .venv in place touches no network and starts at once.
  local hash stamp=.venv/.scaleengine-installed
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && grep -qxF "$hash $1" "$stamp"; then
    return 0
  fi
  if [ "$1" = . ] && [ -f "$stamp" ] && grep -qxF "$hash .[test]" "$stamp"; then
    return 0  # the test extras include the package itself
  fi
  echo "== installing the package into .venv ($1)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
  { grep -s "^$hash " "$stamp" || true; echo "$hash $1"; } >"$stamp.new"  # older hashes go
  mv "$stamp.new" "$stamp"
}

_apt_updated=
apt_install() {
  if [ -z "$_apt_updated" ]; then
    apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_debian_packages PKG:COMMAND ...: install PKG when COMMAND is not on the PATH
# (as root), or fail with the command to run.
ensure_debian_packages() {
  local missing=() spec pkg cmd
  for spec in "$@"; do
    pkg=${spec%%:*}
    cmd=${spec#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
  else
    echo "error: the tests need ${missing[*]} (Debian packages); run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
}
