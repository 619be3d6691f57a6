#!/usr/bin/env bash
# What the tests need beyond the Docker engine: Debian's Chromium, driven headless by
# Playwright (whose own browser download cannot work without internet access).
set -euo pipefail
. "$(dirname "$0")/apt.sh"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_install "headless browser checks of the HTML report" chromium
  else
    echo "warning: /usr/bin/chromium is missing; the report's browser test will fail (apt-get install chromium)" >&2
  fi
fi
# Pebble, Let's Encrypt's ACME test server: the tests issue real certificates from it (tls.mode acme).
if [ ! -x /usr/bin/pebble ] || [ ! -x /usr/bin/pebble-challtestsrv ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_install "ACME test server for the acme e2e test" pebble
  else
    echo "warning: pebble is missing; the ACME e2e test will fail (apt-get install pebble)" >&2
  fi
fi
# BIND 9: the authoritative DNS server of the DNS-01 test zone (RFC 2136 updates with TSIG).
if ! command -v named >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing bind9 (DNS server for the DNS-01 test) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bind9 >/dev/null
  else
    echo "warning: named is missing; the DNS-01 test will fail (apt-get install bind9)" >&2
  fi
fi
# Playwright's driver (a node binary inside the wheel) links libatomic.so.1, which a minimal Debian
# lacks: without it every browser test fails with "Connection closed while reading from the driver".
if ! "$(command -v ldconfig || echo /sbin/ldconfig)" -p 2>/dev/null | grep 'libatomic\.so\.1 ' >/dev/null; then
  if can_apt; then
    apt_install "Playwright's driver links libatomic.so.1" libatomic1
  else
    echo "warning: libatomic.so.1 is missing; Playwright cannot start (apt-get install libatomic1)" >&2
  fi
fi
# slapd: the LDAP directory of the ldap login tests (auth.mode ldap); ldap-utils for its tools.
if [ ! -x /usr/sbin/slapd ] || [ ! -x /usr/sbin/slapadd ]; then
  if can_apt; then
    apt_install "LDAP directory for the ldap login tests" slapd ldap-utils
  else
    echo "warning: slapd is missing; the LDAP tests will fail (apt-get install slapd ldap-utils)" >&2
  fi
fi
# Node.js and npm: the OpenID provider of the oidc tests (npm's oidc-provider, installed on first use).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if can_apt; then
    apt_install "OpenID provider (oidc-provider on Node.js) for the oidc tests" nodejs npm
  else
    echo "warning: node or npm is missing; the OIDC tests will fail (apt-get install nodejs npm)" >&2
  fi
fi
# OpenSSH's server: lab nodes run sshd in their own namespaces for the ssh:// engine tests (the
# operator's side uses the ssh client). Debian's package does not start a daemon here without an
# init system; the tests start their own, inside lab namespaces only.
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null 2>&1; then
  if can_apt; then
    apt_install "sshd inside lab nodes for the ssh:// engine tests" openssh-server openssh-client
  else
    echo "warning: sshd is missing; the ssh:// engine tests will fail (apt-get install openssh-server)" >&2
  fi
fi
