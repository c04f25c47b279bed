#!/usr/bin/env bash
# Install what the test suite's calendar checkers need on a fresh Debian
# machine (run as root). Idempotent: installs only what is missing, and runs
# `apt-get update` at most once, only if something must be installed.
#   - libical via GObject introspection, used by tests/libical_check.py
#     under Debian's /usr/bin/python3 (gi is not importable elsewhere);
#   - node + npm and the pinned ical.js and node-ical in tests/js (npm ci, from the lockfile);
#   - php with composer and sabre/vobject 4 in tests/php (Nextcloud's parser; Debian 12's
#     php-sabre-vobject is 2.1, which does not unescape TEXT, so it comes from Packagist).
# Home Assistant's ical is a Python package: pip install -e '.[test]' installs it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

apt_updated=0
apt_install() {
    # apt_install PKG...: install the given Debian packages, updating lists once.
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in gir1.2-ical-3.0 python3-gi; do
    deb_installed "$pkg" || missing+=("$pkg")
done
# Keep an existing node/npm (e.g. a newer one already on PATH) rather than
# replacing it with Debian's.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

# --- more system packages below ---
# Real products the source tests run against, the browser for the page tests (with a font
# that has the kind icons), nginx + wrk for the serving benchmark, and the PostgreSQL server
# the second pass of the suite runs on (tests/postgres.py starts a private cluster with its
# binaries; the package's own cluster is not used).
for pkg in prometheus-alertmanager restic chromium nginx-light wrk fonts-noto-color-emoji postgresql; do
    deb_installed "$pkg" || missing+=("$pkg")
done
# php for sabre/vobject (tests/sabre_check.php): mbstring and xml are what sabre/vobject and
# sabre/xml require; composer fetches them from Packagist (below)
for pkg in php-cli php-mbstring php-xml composer; do
    deb_installed "$pkg" || missing+=("$pkg")
done
# systemd-analyze checks the shipped units (tests/test_deploy_files.py)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-test-deps: installing ${missing[*]}"
    apt_install "${missing[@]}"
else
    echo "install-test-deps: system packages already present"
fi

ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    || { echo "install-test-deps: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/pg_ctl)" >&2; exit 1; }
id postgres >/dev/null 2>&1 \
    || { echo "install-test-deps: no postgres system user (the test cluster runs as it when run as root)" >&2; exit 1; }

/usr/bin/python3 -c "import gi; gi.require_version('ICalGLib', '3.0'); from gi.repository import ICalGLib" \
    || { echo "install-test-deps: ICalGLib 3.0 is not importable by /usr/bin/python3" >&2; exit 1; }

# ical.js and node-ical exactly as pinned in tests/js/package-lock.json.
npm ci --prefix "$repo_root/tests/js" --no-audit --no-fund

# sabre/vobject and sabre/xml as pinned in tests/php/composer.json (root may run composer here).
# Packagist is not reachable from every machine (Debian has no sabre/vobject 4): without it
# the Nextcloud checks skip, saying why (tests/parsers.py::sabre_missing); nothing else needs it.
COMPOSER_ALLOW_SUPERUSER=1 timeout 120 composer install --working-dir "$repo_root/tests/php" --no-interaction --no-progress \
    || echo "install-test-deps: composer could not install sabre/vobject 4 (Packagist unreachable?); the Nextcloud checks will skip" >&2
