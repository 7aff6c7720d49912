#!/usr/bin/env bash
# System packages the controller needs besides .venv (Debian/Ubuntu; idempotent):
#   rsync         ansible.posix.synchronize copies the app and app_patches to the servers;
#   redis-server  the unit tests of the rq code start their own redis-server on loopback
#                 (the distribution's service is left stopped and disabled);
#   chromium, chromium-driver
#                 the browser tests drive the site's staff pages in a real headless browser
#                 (molecule/browser_campaign.py, through Selenium);
#   postgresql    the claim tests start their own throwaway cluster (initdb/pg_ctl on a unix
#                 socket, as the postgres user); the distribution's cluster is stopped too.
set -euo pipefail
missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
{ command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; } \
  || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
echo "[prepare-host] installing ${missing[*]}" >&2
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# The tests start their own server; a system one would only hold port 6379.
if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [ -d /run/systemd/system ]; then
  as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v systemctl >/dev/null 2>&1 \
    && [ -d /run/systemd/system ]; then
  as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
