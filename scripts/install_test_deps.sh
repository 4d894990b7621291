#!/usr/bin/env bash
# Installs the system tools the test suite uses, only when missing:
#   kcat      — an independent Kafka client, to check our broker with software we did not write
#   chromium  — headless browser, to check that report.html really renders its charts, and to drive the
#               live dashboard (tests/integration/test_dashboard.py, through Playwright's Python package
#               with executable_path=/usr/bin/chromium: no browser download, no chromium-driver needed)
#   prometheus — a real Prometheus server, started by tests/integration/test_external_metrics.py on loopback,
#               for the external-metric rules (Debian's package; its service is not started here)
# Needs apt and root; on other systems install them with your package manager.
set -euo pipefail
missing=()
command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || missing+=(kcat)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_deps: please install: ${missing[*]} (no apt-get here)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_test_deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
