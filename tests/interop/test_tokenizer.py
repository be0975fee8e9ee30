"""Tokenizers both ways between Hugging Face files and GGUF metadata
(src/tokenizer/), checked against the references:

- HF -> GGUF: our `tokenizer.*` keys against those convert_hf_to_gguf.py
  writes for every fixture (`--vocab-only`, read back with gguf-py): same
  keys, order, types and values, except the documented places where qforge
  does better than the script.
- GGUF -> HF: the tokenizer.json we rebuild gives the same token ids as
  llama.cpp's tokenizer (llama-cpp-python, `vocab_only`) and as transformers'
  GGUF loader on a real text corpus and tricky strings, for SmolLM2 and for
  every fixture taken to GGUF; each string where the references disagree
  with each other is listed below with the reason.
- HF -> GGUF -> HF gives the original tokenizer.json's ids.
- The runtime tokenizer (tokenizer_tool encode) tokenizes the whole GPL-3 as
  llama.cpp does, and a Hugging Face folder as transformers does.

The fixtures' vocabularies are freshly trained, so their check-text hashes
are in no table: tests/interop/convert_with_pre.py runs the unmodified
script and answers only that question, with the name in FIXTURE_PRE.
"""

import json
import os
import pathlib
import subprocess
import sys

import gguf
import pytest
import tokenizers
from llama_cpp import Llama
from transformers import AutoTokenizer

from conftest import ROOT

FIXTURES = ROOT / "fixtures"
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]
# The pre-tokenizer each byte-level fixture was trained with (fixtures/generate.py).
FIXTURE_PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}
LICENSES = pathlib.Path("/usr/share/common-licenses")

TRICKY = {
    "hello": "Hello world",
    "lead1": " leading",
    "lead2": "  leading spaces",
    "trail": "trailing   ",
    "ws": "tabs\tand\nnewlines\r\n\r\n",
    "digits": "123 4567 89012 3.14159 1,000,000",
    "numerals": "٣٤٥ ١٢ ²³ ½ Ⅻ",
    "accents": "café naïve e\u0301 ñ",
    "cjk": "日本語のテキスト 中文 한국어",
    "emoji": "emoji 🦙🚀👍🏽 👨‍👩‍👧",
    "contractions": "'s 'S 'ſ 'll 'LL don't I'M",
    "chatml": "<|im_start|>user\nhi<|im_end|>\n",
    "endoftext": "<|endoftext|><|endoftext|>x",
    "runs": "a  b   c    d",
    "unicode_ws": "\u00a0nbsp\u2003em\u3000ideo",
    "zero_width": "x\u200bzero-width",
    "spm_specials": "<s>a</s> b<unk>",
    "code": "    def f(x):\n        return x**2\n",
    "caps": "ÀÉÎÕÜ ß ẞ",
    "controls": "\x00\x01 control",
    "line_seps": "a\u0085b\u2028c",
    "llama3_chat": "<|begin_of_text|>hi<|eot_id|> x",
    "gemma_chat": "<start_of_turn>user\n hi<end_of_turn>\n",
    "phi3_chat": "<|user|>\n hi<|end|>\n <|assistant|>",
    "think": "<think>\n\n</think>\n\nok",
    "literal_pieces": "<0x0A> <mask> [multimodal]",
    "two_spaces": "  ",
    "newline": "\n",
    "empty": "",
}


def corpus():
    texts = {name: (LICENSES / name).read_text() for name in ("GPL-3", "Apache-2.0")}
    texts.update(TRICKY)
    return texts


# Where transformers' GGUF loader (transformers/integrations/gguf) differs
# from llama.cpp, and so from us: we follow llama.cpp.
TRANSFORMERS_GGUF_DIVERGES = {
    # 'smollm' is not in its split table: GPT-2's regex without llama.cpp's
    # digit split, so whitespace before a digit joins differently
    # ("\n\n  0. Definitions": llama.cpp "ĊĊĠĠ","0"; transformers "ĊĊĠ","Ġ0"->"Ġ","0").
    "smollm2": {"GPL-3", "Apache-2.0", "numerals"},
    # It adds "<|endoftext|>" as a new token (id 512) to a llama-bpe
    # vocabulary that has no such token.
    "llama": {"endoftext"},
    # LlamaTokenizer's Metaspace adds the "▁" prefix only at the very start:
    # not after special tokens, and a leading space is not doubled.
    "mistral": {"GPL-3", "lead1", "lead2", "spm_specials", "code", "two_spaces"},
    # llama.cpp strips whitespace after Phi-3's special tokens (chosen by the
    # model name "phi3"); transformers does not.
    "phi3": {"spm_specials", "phi3_chat"},
}

# Where the round trip HF -> GGUF -> HF cannot give the original's ids,
# because llama.cpp (and so the GGUF) has no way to say it.
ROUND_TRIP_DIVERGES = {
    # Qwen2's tokenizer.json normalizes to NFC; llama.cpp does not normalize.
    "qwen2": {"accents"},
    "qwen3": {"accents"},
    # llama.cpp strips whitespace after "</s>" for models named Phi-3; the
    # fixture's "</s>" has no rstrip.
    "phi3": {"spm_specials"},
}

# Keys where our HF -> GGUF output differs from the script on purpose
# (see src/tokenizer/to_gguf.rs, "Better than the script").
BETTER_THAN_SCRIPT = {
    # The script writes no add_bos_token for Phi-3's template, which adds
    # no BOS; llama.cpp then adds one. We write False.
    "phi3": {"tokenizer.ggml.add_bos_token"},
    # Gemma's user-defined pieces (<mask>, <start_of_turn>...) keep their
    # control / user-defined type (and score -1000) from tokenizer.json;
    # the script makes them NORMAL when tokenizer_config.json (transformers 5)
    # has no added_tokens_decoder.
    "gemma3": {"tokenizer.ggml.token_type", "tokenizer.ggml.scores"},
}


@pytest.fixture(scope="session")
def tool():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--example", "tokenizer_tool"],
        cwd=ROOT,
        check=True,
    )
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "tokenizer_tool"


def fixture_dir(arch):
    path = FIXTURES / arch
    if not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"{path} has no tokenizer.json: generate the fixtures (fixtures/generate.py)")
    return path


@pytest.fixture(scope="session")
def script_gguf(tmp_path_factory):
    """convert_hf_to_gguf.py --vocab-only output per fixture, made once."""
    out_dir = tmp_path_factory.mktemp("script")
    cache = {}

    def make(arch):
        if arch not in cache:
            out = out_dir / f"{arch}.gguf"
            env = dict(os.environ, QFORGE_TOKENIZER_PRE=FIXTURE_PRE.get(arch, ""))
            proc = subprocess.run(
                [sys.executable, ROOT / "tests" / "interop" / "convert_with_pre.py",
                 "--vocab-only", "--outfile", out, fixture_dir(arch)],
                env=env, capture_output=True, text=True,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache[arch] = out
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def our_gguf(tool, script_gguf, tmp_path_factory):
    """The script's vocab-only file with its tokenizer keys replaced by ours."""
    out_dir = tmp_path_factory.mktemp("ours")
    cache = {}

    def make(arch):
        if arch not in cache:
            out = out_dir / f"{arch}.gguf"
            subprocess.run(
                [tool, "hf-to-gguf-keys", fixture_dir(arch), out, "--into", script_gguf(arch)], check=True
            )
            cache[arch] = out
        return cache[arch]

    return make


def tokenizer_fields(path):
    reader = gguf.GGUFReader(str(path))
    return {
        name: ([t.name for t in f.types], f.contents())
        for name, f in reader.fields.items()
        if name.startswith("tokenizer.")
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_keys_match_convert_hf_to_gguf(arch, tool, script_gguf, tmp_path):
    ours_path = tmp_path / "keys.gguf"
    subprocess.run([tool, "hf-to-gguf-keys", fixture_dir(arch), ours_path], check=True)
    reference = tokenizer_fields(script_gguf(arch))
    ours = tokenizer_fields(ours_path)
    better = BETTER_THAN_SCRIPT.get(arch, set())
    differing = {k for k in reference.keys() | ours.keys() if reference.get(k) != ours.get(k)}
    assert differing == better, f"keys differing from the script: {sorted(differing)}"
    assert [k for k in ours if k in reference] == list(reference), "key order"
    for key in better:
        if key in reference and key in ours:
            assert reference[key][0] == ours[key][0], f"{key}: type"


def test_pre_tokenizer_found_without_the_wrapper(tool, tmp_path):
    """The wrapper's answers are what our structure check finds on its own."""
    for arch, pre in FIXTURE_PRE.items():
        out = tmp_path / f"{arch}.gguf"
        subprocess.run([tool, "hf-to-gguf-keys", fixture_dir(arch), out], check=True)
        assert tokenizer_fields(out)["tokenizer.ggml.pre"][1] == pre, arch


def test_unknown_pre_tokenizer_names_the_override(tool, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    tj = json.loads((fixture_dir("qwen2") / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    proc = subprocess.run([tool, "hf-to-gguf-keys", folder, tmp_path / "x.gguf"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--tokenizer-pre NAME" in proc.stderr and "Whitespace" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [tool, "hf-to-gguf-keys", folder, tmp_path / "x.gguf", "--tokenizer-pre", "gpt-2"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert tokenizer_fields(tmp_path / "x.gguf")["tokenizer.ggml.pre"][1] == "gpt-2"


def compare_on_corpus(name, ours, reference):
    """Names of corpus texts where `reference` (text -> ids) differs from our tokenizer.json."""
    differ = set()
    for text_name, text in corpus().items():
        if ours.encode(text).ids != reference(text):
            differ.add(text_name)
    return differ


def check_gguf_to_hf(name, gguf_path, tool, tmp_path):
    out = tmp_path / "hf"
    subprocess.run([tool, "gguf-to-hf", gguf_path, out], check=True)
    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    llama_differs = compare_on_corpus(name, ours, lambda t: llm.tokenize(t.encode(), add_bos=True, special=True))
    assert llama_differs == set(), f"{name}: our tokenizer.json differs from llama.cpp on {sorted(llama_differs)}"
    hf = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    hf_differs = compare_on_corpus(name, ours, lambda t: hf(t)["input_ids"])
    assert hf_differs == TRANSFORMERS_GGUF_DIVERGES.get(name, set()), (
        f"{name}: transformers' GGUF loader differs on {sorted(hf_differs)}"
    )
    return out


def test_gguf_to_hf_smollm2_matches_llama_cpp_and_transformers(tool, smollm2, tmp_path):
    out = check_gguf_to_hf("smollm2", smollm2, tool, tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False
    assert (out / "chat_template.jinja").read_text() == gguf.GGUFReader(str(smollm2)).fields[
        "tokenizer.chat_template"
    ].contents()


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_to_hf_fixtures_match_llama_cpp_and_transformers(arch, tool, our_gguf, tmp_path):
    check_gguf_to_hf(arch, our_gguf(arch), tool, tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_hf_gguf_hf_keeps_the_token_ids(arch, tool, our_gguf, tmp_path):
    out = tmp_path / "hf"
    subprocess.run([tool, "gguf-to-hf", our_gguf(arch), out], check=True)
    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    original = AutoTokenizer.from_pretrained(fixture_dir(arch))
    differs = compare_on_corpus(arch, ours, lambda t: original(t)["input_ids"])
    assert differs == ROUND_TRIP_DIVERGES.get(arch, set()), f"{arch}: round trip differs on {sorted(differs)}"
    template = (fixture_dir(arch) / "chat_template.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == template


def test_smollm2_gguf_hf_gguf_round_trip(tool, smollm2, tmp_path):
    """SmolLM2's GGUF -> our tokenizer.json -> our keys: the check-text hash
    is the script's "smollm" entry (found by hash, not structure), and the
    vocabulary, types and merges are the original's."""
    subprocess.run([tool, "gguf-to-hf", smollm2, tmp_path / "hf"], check=True)
    proc = subprocess.run([tool, "check-hash", tmp_path / "hf"], check=True, capture_output=True, text=True)
    assert proc.stdout.strip() == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    (tmp_path / "hf" / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152})
    )
    subprocess.run([tool, "hf-to-gguf-keys", tmp_path / "hf", tmp_path / "keys.gguf"], check=True)
    original = tokenizer_fields(smollm2)
    ours = tokenizer_fields(tmp_path / "keys.gguf")
    for key in ["model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id",
                "unknown_token_id", "padding_token_id", "add_bos_token"]:
        key = f"tokenizer.ggml.{key}"
        assert ours[key] == original[key], key
    assert ours["tokenizer.chat_template"] == original["tokenizer.chat_template"]


def encode_with_tool(tool, model, text, tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(text.encode())
    proc = subprocess.run([tool, "encode", model, path], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)


def test_runtime_matches_llama_cpp_on_the_whole_gpl3(tool, smollm2, gpl3_text, tmp_path):
    """What llama-perplexity feeds the model: the whole file, add_special and
    parse_special on."""
    llm = Llama(model_path=str(smollm2), vocab_only=True, verbose=False)
    text = gpl3_text.read_bytes()
    reference = llm.tokenize(text, add_bos=True, special=True)
    proc = subprocess.run([tool, "encode", smollm2, gpl3_text], check=True, capture_output=True, text=True)
    ours = json.loads(proc.stdout)
    assert len(ours) == len(reference) == 7639
    assert ours == reference


@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_from_gguf_matches_llama_cpp(arch, tool, our_gguf, tmp_path):
    gguf_path = our_gguf(arch)
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    for name, text in corpus().items():
        ours = encode_with_tool(tool, gguf_path, text, tmp_path)
        assert ours == llm.tokenize(text.encode(), add_bos=True, special=True), (arch, name)


@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_from_hf_dir_matches_transformers(arch, tool, tmp_path):
    original = AutoTokenizer.from_pretrained(fixture_dir(arch))
    for name, text in corpus().items():
        assert encode_with_tool(tool, fixture_dir(arch), text, tmp_path) == original(text)["input_ids"], (arch, name)
