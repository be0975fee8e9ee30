"""Runs llama.cpp's convert_hf_to_gguf.py unchanged, except that a BPE
vocabulary whose pre-tokenizer hash the script does not know gets the name
given here instead of an error.

The script identifies a BPE pre-tokenizer by hashing the token ids of a fixed
text against a table of published models; the fixtures' tiny trained
tokenizers are in no table, so the script refuses them. This wrapper answers
that one question and changes nothing else: a known hash still wins.

    python convert_hf_to_gguf_pre.py LLAMA_SRC PRE_NAME [script arguments...]
"""

import runpy
import sys


def main():
    llama_src, pre_name = sys.argv[1], sys.argv[2]
    script = f"{llama_src}/convert_hf_to_gguf.py"
    sys.argv = [script, *sys.argv[3:]]
    sys.path.insert(0, llama_src)

    from conversion.base import TextModel

    known = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return pre_name

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
