#!/usr/bin/env bash
# The 'more' training voices of `aero data synth` (voice sets 'more' and 'wide'): MBROLA's
# us1/us2/us3/en1 diphones (driven by espeak-ng), SVOX Pico (pico2wave) and festival's rab and
# don. MBROLA is in Debian's contrib section and its voices and Pico in non-free, so on Debian
# this enables those sections for the machine's apt sources first. Needs root.
set -euo pipefail
SOURCES=/etc/apt/sources.list.d/debian.sources
if [ -f "$SOURCES" ] && grep -q '^Components: main$' "$SOURCES"; then
  sed -i 's/^Components: main$/Components: main contrib non-free/' "$SOURCES"
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils \
  festvox-rablpc16k festvox-don >/dev/null
echo "installed: mbrola (us1 us2 us3 en1), pico2wave, festival rab_diphone and don_diphone"
