#!/usr/bin/env bash
# Try the README's set-up on a minimal Debian 12, as a newcomer on a fresh machine would.
#
# A tool for developers (not part of `make test`). Run as root on a Linux machine:
#
#   scripts/try-minimal-debian.sh [--ref REF] [--then 'COMMAND'] [--keep] [--cache DIR]
#
# 1. `debootstrap --variant=minbase bookworm` into DIR/bookworm-minbase (DIR: --cache, default
#    /var/cache/hubops-try), once; later runs reuse it. It has no python3, make, git, ip or curl.
# 2. Copies it to a fresh work folder and puts a bare clone of this repository's commit REF
#    (default HEAD; committed work only) at /srv/hubops.git in it.
# 3. Runs that tree as a machine of its own: network, mount, UTS and PID namespaces, the tree
#    bind-mounted on itself with /proc, /sys, /dev and a tmpfs /run, then pivot_root (not chroot:
#    runc's `docker exec` escapes a chroot). A veth pair gives it 10.62.0.2/24, with NAT on this
#    host for that address only, so apt and pip reach the package registries. This host's CA
#    certificates (/usr/local/share/ca-certificates/*.crt and /etc/ssl/certs/ca-certificates.crt)
#    are copied in and PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE point at the tree's bundle,
#    as on this host: HTTPS may go through a TLS-intercepting proxy.
# 4. Inside, as root in /root, the README's steps for a minimal Debian:
#      apt-get update && apt-get install -y git make
#      git clone /srv/hubops.git hubops && cd hubops
#      make deploy
#    then COMMAND (--then) in the clone, e.g.
#      --then "PYTEST_ADDOPTS='--ignore=tests/e2e' make test"
#    `make deploy` starts a dockerd inside the namespaces (scripts/ensure-docker.sh) and, since no
#    registry answers, debootstraps the base image there.
# 5. On exit, whatever happened: the containers and dockerd inside are stopped, the namespaces,
#    the veth pair and the NAT rules are removed, and the work folder is deleted (--keep keeps it).
#
# The run's output goes to the terminal and to DIR/runs/TIMESTAMP.log. Exit status: that of the
# steps inside. Names used: network namespace hdeb-min, host link hdeb0, subnet 10.62.0.0/24
# (override with HDEB_NETNS, HDEB_LINK, HDEB_PREFIX=10.62.0).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
REF=HEAD
THEN=
KEEP=0
CACHE=${HUBOPS_TRY_CACHE:-/var/cache/hubops-try}
MIRROR=${HUBOPS_TRY_MIRROR:-http://deb.debian.org/debian}
NETNS=${HDEB_NETNS:-hdeb-min}
LINK=${HDEB_LINK:-hdeb0}
PREFIX=${HDEB_PREFIX:-10.62.0}
HOST_ADDR=$PREFIX.1
TREE_ADDR=$PREFIX.2
SUBNET=$PREFIX.0/24

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --ref) REF=$2; shift 2 ;;
    --then) THEN=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --cache) CACHE=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done

die() { echo "try-minimal-debian: $*" >&2; exit 1; }
say() { echo "try-minimal-debian: $*"; }

[ "$(id -u)" = 0 ] || die "run as root: it creates namespaces, a veth pair and NAT rules"
for t in debootstrap unshare nsenter ip iptables git mount; do
  command -v "$t" >/dev/null 2>&1 || die "$t is missing (apt-get install -y debootstrap util-linux iproute2 iptables git)"
done
SHA=$(git -C "$REPO" rev-parse --verify "$REF^{commit}") || die "$REF is not a commit of $REPO"
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] && [ "$REF" = HEAD ]; then
  say "note: $REPO has uncommitted changes; the tree gets the commit $SHA only"
fi

mkdir -p "$CACHE/runs"
exec 9>"$CACHE/lock"
flock -n 9 || die "another run holds $CACHE/lock"

# -- 1. the minimal tree, once ----------------------------------------------------------------
BASE=$CACHE/bookworm-minbase
if [ ! -d "$BASE" ]; then
  say "debootstrap --variant=minbase bookworm $BASE (once; about a minute) ..."
  rm -rf "$BASE.partial"
  t=$(date +%s)
  debootstrap --variant=minbase bookworm "$BASE.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  mv "$BASE.partial" "$BASE"
  say "debootstrapped in $(( $(date +%s) - t )) s"
fi

# -- the clean-up, armed before anything is created --------------------------------------------
WORK=
PID=
FORWARD_WAS=
NAT_RULES=(
  "-t nat POSTROUTING -s $SUBNET ! -o $LINK -j MASQUERADE"
  "-t filter FORWARD -i $LINK -s $SUBNET -j ACCEPT"
  "-t filter FORWARD -o $LINK -d $SUBNET -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
)
rule() {  # rule -A|-I|-C|-D "-t TABLE CHAIN SPEC..."
  local op=$1; set -- $2
  local table=$2 chain=$3; shift 3
  iptables -w -t "$table" "$op" "$chain" -m comment --comment "hubops try-minimal-debian" "$@"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    # The tree's PID 1 stops its containers and dockerd when asked to end; unshare --kill-child
    # then ends whatever is left when unshare itself is killed.
    # unshare's children: the tree's PID 1 (in the new PID namespace) and the log's tee (here).
    local c init=
    for c in $(cat "/proc/$PID/task/$PID/children" 2>/dev/null); do
      [ "$(readlink "/proc/$c/ns/pid")" != "$(readlink /proc/$$/ns/pid)" ] && init=$c
    done
    [ -n "$init" ] && kill -TERM "$init" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  ip netns del "$NETNS" 2>/dev/null || true
  ip link del "$LINK" 2>/dev/null || true
  local r
  for r in "${NAT_RULES[@]}"; do
    while rule -C "$r" 2>/dev/null; do rule -D "$r"; done
  done
  [ "$FORWARD_WAS" = 0 ] && echo 0 >/proc/sys/net/ipv4/ip_forward
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    # Every mount of the run was made in its own mount namespace; none should show here.
    if findmnt -rn -o TARGET | grep "^$WORK/" >/dev/null; then
      findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | while read -r m; do umount -l "$m" || true; done
    fi
    if [ "$KEEP" = 1 ]; then say "kept the tree: $WORK/root"; else rm -rf --one-file-system "$WORK"; fi
  fi
  say "cleaned up: namespaces, $LINK, NAT rules$([ "$KEEP" = 1 ] || echo ", work folder")"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Left over by a run that was killed before its clean-up: ours by name.
if ip netns list | grep -w "$NETNS" >/dev/null; then say "removing a left-over namespace $NETNS"; ip netns del "$NETNS"; fi
ip link show "$LINK" >/dev/null 2>&1 && ip link del "$LINK"
if ip route | grep -v "dev $LINK" | grep "^$PREFIX\." >/dev/null; then
  die "$SUBNET overlaps a route of this machine (ip route): set HDEB_PREFIX to a free /24"
fi

# -- 2. a fresh copy of the tree, the commit, this host's CA certificates ----------------------
WORK=$(mktemp -d /var/tmp/hdeb-try.XXXXXX)
ROOT=$WORK/root
LOG=$CACHE/runs/$(date -u +%Y%m%dT%H%M%SZ).log
say "log: $LOG"
t=$(date +%s)
cp -a "$BASE" "$ROOT"
git clone -q --bare --no-local "$REPO" "$ROOT/srv/hubops.git"
git -C "$ROOT/srv/hubops.git" cat-file -e "$SHA^{commit}" 2>/dev/null \
  || git -C "$ROOT/srv/hubops.git" fetch -q "$REPO" "$SHA" \
  || die "commit $SHA is on no branch of $REPO"
git -C "$ROOT/srv/hubops.git" update-ref refs/heads/try "$SHA"
git -C "$ROOT/srv/hubops.git" symbolic-ref HEAD refs/heads/try
mkdir -p "$ROOT/usr/local/share/ca-certificates" "$ROOT/etc/ssl/certs"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
rm -f "$ROOT/etc/resolv.conf"; cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
echo "$NETNS" >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$NETNS" >"$ROOT/etc/hosts"
say "tree copied and commit $(git -C "$REPO" log -1 --format='%h %s' "$SHA") cloned in $(( $(date +%s) - t )) s"

# The steps inside, run as the tree's PID 1 (a new PID namespace), with a login's environment.
cat >"$ROOT/root/try-steps.sh" <<'STEPS'
#!/bin/bash
set -euo pipefail
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 )) s] $*"; }
stop_engine() {
  # Containers first (their cgroups and mounts go with them), then dockerd and its containerd.
  if [ -S /var/run/docker.sock ] && command -v docker >/dev/null 2>&1; then
    ids=$(timeout 20 docker ps -aq 2>/dev/null || true)
    [ -n "$ids" ] && timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [ -f /var/run/docker.pid ]; then
    pid=$(cat /var/run/docker.pid); kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
}
finish() { rc=$?; trap - EXIT TERM INT; step "stopping the engine inside"; stop_engine; step "steps ended with status $rc"; exit $rc; }
trap finish EXIT

main() {
step "a minimal Debian $(cat /etc/debian_version) ($(hostname)); what it lacks:"
for c in python3 make git ip iptables curl docker; do command -v $c >/dev/null || echo "  no $c"; done

step "README, on a minimal Debian first: apt-get update && apt-get install -y git make"
apt-get update -qq && apt-get install -y -qq git make >/dev/null
step "git clone (the repository, at /srv/hubops.git here)"
git clone -q /srv/hubops.git /root/hubops
cd /root/hubops
git log -1 --format='   %h %s'
step "README: make deploy"
make deploy
if [ -n "$THEN" ]; then
  step "then: $THEN"
  bash -c "$THEN"
fi
}
# In the background, so that a TERM from the host is handled at once (bash runs a trap only
# after its foreground command ends); whatever is still running when PID 1 exits is killed.
main &
main_pid=$!
trap 'kill -TERM $main_pid 2>/dev/null; exit 143' TERM INT
set +e; wait $main_pid; rc=$?; set -e
exit $rc
STEPS

# -- 3. the namespaces -------------------------------------------------------------------------
FORWARD_WAS=$(cat /proc/sys/net/ipv4/ip_forward)
[ "$FORWARD_WAS" = 1 ] || echo 1 >/proc/sys/net/ipv4/ip_forward
ip netns add "$NETNS"
ip link add "$LINK" type veth peer name eth0 netns "$NETNS"
ip addr add "$HOST_ADDR/24" dev "$LINK"
ip link set "$LINK" up
ip -n "$NETNS" link set lo up
ip -n "$NETNS" addr add "$TREE_ADDR/24" dev eth0
ip -n "$NETNS" link set eth0 up
ip -n "$NETNS" route add default via "$HOST_ADDR"
for r in "${NAT_RULES[@]}"; do
  case $r in *POSTROUTING*) rule -A "$r" ;; *) rule -I "$r" ;; esac
done

# Run as the tree's PID 1 after pivot_root; the host's mounts stay untouched (private namespace).
SETUP='set -euo pipefail
root=$1
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/lock"
hostname "$(cat "$root/etc/hostname")"
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
bundle=/etc/ssl/certs/ca-certificates.crt
exec env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle THEN="$2" \
  /bin/bash /root/try-steps.sh'

say "running the README's steps in the tree (netns $NETNS, $TREE_ADDR) ..."
t=$(date +%s)
nsenter --net="/run/netns/$NETNS" unshare --mount --uts --pid --fork --kill-child \
  bash -c "$SETUP" setup "$ROOT" "$THEN" > >(tee -a "$LOG") 2>&1 </dev/null &
PID=$!
set +e
wait "$PID"
RC=$?
set -e
PID=
say "steps inside: exit status $RC after $(( $(date +%s) - t )) s (log: $LOG)"
exit "$RC"
