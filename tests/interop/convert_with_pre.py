"""Run llama.cpp's convert_hf_to_gguf.py, answering the pre-tokenizer name
for a vocabulary its hash table does not know.

The script identifies a BPE pre-tokenizer by the sha256 of the token ids of
a fixed check text (`get_vocab_base_pre`) and stops with NotImplementedError
for any hash it was not taught: every freshly trained vocabulary, so every
tiny fixture. This wrapper lets the script run unchanged and only replaces
that final error with the name given in QFORGE_TOKENIZER_PRE. A known hash
still gets the script's own answer; nothing else in the conversion changes.

Usage: QFORGE_TOKENIZER_PRE=llama-bpe python convert_with_pre.py ARGS...
(ARGS as for convert_hf_to_gguf.py; QFORGE_LLAMA_SRC names its tree).
"""

import os
import sys

LLAMA_SRC = os.environ["QFORGE_LLAMA_SRC"]
sys.path.insert(0, LLAMA_SRC)
sys.path.insert(1, os.path.join(LLAMA_SRC, "gguf-py"))

import convert_hf_to_gguf  # noqa: E402
from conversion import TextModel  # noqa: E402

_original = TextModel.get_vocab_base_pre


def _get_vocab_base_pre(self, tokenizer):
    try:
        return _original(self, tokenizer)
    except NotImplementedError:
        name = os.environ.get("QFORGE_TOKENIZER_PRE")
        if not name:
            raise
        return name


TextModel.get_vocab_base_pre = _get_vocab_base_pre

if __name__ == "__main__":
    sys.argv[0] = os.path.join(LLAMA_SRC, "convert_hf_to_gguf.py")
    convert_hf_to_gguf.main()
