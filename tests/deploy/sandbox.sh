#!/usr/bin/env bash
# Run a command roughly as a deploy/systemd unit would, without systemd (containers, CI):
#   sandbox.sh UID STRICT|FULL INSTALL_DIR WRITABLE_DIR COMMAND...
# as UID with no_new_privs (User=, NoNewPrivileges=yes) in a private mount namespace where
#   STRICT: / and INSTALL_DIR are read-only except WRITABLE_DIR   (ProtectSystem=strict + ReadWritePaths=)
#   FULL:   /usr, /etc and /boot are read-only                    (ProtectSystem=full)
# /tmp stays writable (the units' PrivateTmp gives them a writable one too). Needs root.
# SANDBOX_EXPOSE: folders under /root (0700) to keep reachable, ':'-separated (a pyenv Python).
set -euo pipefail
uid=$1 mode=$2 install=$3 writable=$4
shift 4
exec unshare -m --propagation private -- bash -euo pipefail -c '
uid=$1 mode=$2 install=$3 writable=$4
shift 4
if [ -n "${SANDBOX_EXPOSE:-}" ]; then
  IFS=: read -ra expose <<< "$SANDBOX_EXPOSE"
  stage=$(mktemp -d -p "$install")       # (removed with the install dir)
  for i in "${!expose[@]}"; do mkdir "$stage/$i"; mount --bind "${expose[$i]}" "$stage/$i"; done
  mount -t tmpfs -o mode=755 tmpfs /root  # hides /root: what it held is only under $stage now
  for i in "${!expose[@]}"; do mkdir -p "${expose[$i]}"; mount --bind "$stage/$i" "${expose[$i]}"; done
fi
if [ "$mode" = STRICT ]; then
  mount --bind /tmp /tmp                  # keep /tmp writable under the read-only /
  mount -o remount,bind,ro /
  mount --bind "$install" "$install"
  mount -o remount,bind,ro "$install"     # /tmp holds the test install dir: make it read-only
else
  for dir in /usr /etc /boot; do
    if [ -d "$dir" ]; then mount --bind "$dir" "$dir"; mount -o remount,bind,ro "$dir"; fi
  done
fi
mount --bind "$writable" "$writable"      # on top of the read-only mounts ...
mount -o remount,bind,rw "$writable"      # ... and writable (a bind inherits read-only)
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs -- "$@"
' sandbox "$uid" "$mode" "$install" "$writable" "$@"
