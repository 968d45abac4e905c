#!/usr/bin/env bash
# Park carried files on the warm GPU machine for the next call: park.sh DIR... copies each .carry/DIR/* to
# /root/h6. A file too big for one call's 64 MiB travels in parts over back-to-back calls this way.
# With SCENES=N it also renders N shapes-world training scenes into /root/h6/data (for run_draft.sh), and with
# TEXT_CAPTIONS=M writes M text-only caption samples there (budget v6's instruct mix); FONTS=DIR, RANDOM_WORDS=S
# and CAPTION_SIZES=1 pass --fonts, --random-words and --caption-sizes (budget v7's data); FAMILIES=caption
# renders captions only (the swap probe).
set -uo pipefail
W=/root/h6; mkdir -p $W
for d in "$@"; do cp -r .carry/$d/* $W/ || exit 2; done
if [ -n "${SCENES:-}" ]; then
  PYTHONPATH=$PWD python3 -m llavakit.cli data shapes --out $W/data --train $SCENES --val 10 --test ${TEST:-10} --seed 0 \
    --text-captions ${TEXT_CAPTIONS:-0} ${FONTS:+--fonts $FONTS} --random-words ${RANDOM_WORDS:-0} \
    ${CAPTION_SIZES:+--caption-sizes} ${FAMILIES:+--families $FAMILIES} --workers 16 --force > /dev/null || exit 3
fi
ls -la $W; echo "total ${SECONDS}s"
