#!/usr/bin/env bash
# Installs the Debian packages that the test suite and the benchmark drive (SIPp, baresip,
# sipvicious, Kamailio, PostgreSQL, sox; socat and openssl for the TLS tests, since Debian's SIPp
# has no TLS; rtpengine for the external media relay; nftables and iproute2 for the NAT tests in
# network namespaces), only those that are missing. No service is started:
# a policy-rc.d that refuses every start is in place during the install.
set -euo pipefail

PACKAGES=(sip-tester baresip-core sipvicious kamailio postgresql sox socat openssl
          rtpengine-daemon nftables iproute2)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "test dependencies: all installed (${PACKAGES[*]})"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "test dependencies missing: ${missing[*]}" >&2
    echo "this system has no apt-get: install the equivalents of these Debian packages." >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "test dependencies missing: ${missing[*]}" >&2
        echo "install them as root:" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

echo "installing test dependencies: ${missing[*]}"

# Debian's maintainer scripts start services (PostgreSQL, Kamailio, rtpengine) unless policy-rc.d
# forbids it; the tests start their own instances on free ports.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    created_policy=1
fi
cleanup() {
    if [[ $created_policy -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
