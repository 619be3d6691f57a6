# Sourced by the ensure-*.sh scripts: install Debian packages, only as root and only with apt-get.
# apt_install WHY PKG...   installs PKG... (printing WHY), running `apt-get update` first when the
#                          package lists are missing, and once more (then retrying) when the install
#                          fails on stale lists. Returns 1 with a message when it cannot install.

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

_apt_lists_present() { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; }

apt_install() {
  local why=$1; shift
  if ! can_apt; then
    echo "missing: $* ($why). Install them as root: apt-get update && apt-get install -y $*" >&2
    return 1
  fi
  echo "installing $* ($why) ..."
  export DEBIAN_FRONTEND=noninteractive
  if ! _apt_lists_present; then apt-get update -qq; fi
  if ! apt-get install -y -qq "$@" >/tmp/hubops-apt.log 2>&1; then
    apt-get update -qq
    apt-get install -y -qq "$@" >/tmp/hubops-apt.log 2>&1 || {
      tail -20 /tmp/hubops-apt.log >&2
      echo "apt-get install -y $* failed (full log: /tmp/hubops-apt.log)" >&2
      return 1
    }
  fi
}
