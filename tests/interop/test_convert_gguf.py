"""Issue 4, items 1 and 4: Hugging Face <-> GGUF conversions against
llama.cpp's convert_hf_to_gguf.py, llama.cpp itself and transformers.

- HF -> GGUF for every fixture architecture and a Hugging Face copy of
  SmolLM2: tensors byte-identical to the script's for --outtype f32, f16,
  bf16, q8_0, and every key the script writes present with an equal value.
- llama.cpp loads our GGUF and its logits for the fixtures' prompt match
  transformers' (the fixtures' golden logits) within a stated tolerance.
- GGUF -> HF -> GGUF for SmolLM2 in Q8_0 is byte-identical, and the HF
  folder's logits in transformers match llama.cpp's on the GGUF.

The script refuses the fixtures' BPE tokenizers (their pre-tokenizer hash is
in no table); it runs through convert_hf_to_gguf_pre.py, which answers the
pre-tokenizer name and changes nothing else.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file as st_load_file

from conftest import ROOT, llama_tool
from test_tokenizer import BETTER_THAN_SCRIPT

FIXTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]
OUTTYPES = ["f32", "f16", "bf16", "q8_0"]
WRAPPER = pathlib.Path(__file__).with_name("convert_hf_to_gguf_pre.py")

# tokenizer.ggml.pre for BPE vocabularies whose hash the script does not know.
PRE_NAMES = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "smollm2": "smollm"}

# Keys qforge writes that the script does not, each on purpose:
# - qforge.*: provenance (version, command, source files and their sha256);
# - gemma3.attention.sliding_window_pattern: the model's layer_types, which
#   llama.cpp reads and otherwise replaces by "every sixth layer global".
EXTRA_KEYS = {"gemma3.attention.sliding_window_pattern"}

# Max |logit difference| between llama.cpp on our GGUF and transformers in
# float32 on the source weights (the fixtures' golden logits, |logits| up to
# 33), by outtype, with the KV cache in F32. Largest measured over the
# six fixtures, in brackets. What is left is llama.cpp's CPU arithmetic
# for each weight type, not the conversion (the tensors are the script's
# bytes): with F32 weights only Gemma's GELU, which ggml takes from an f16
# table (2.3e-3; the others 1.4e-5); with F16 weights the activations are
# rounded to f16 for the matmuls (1.4e-2); with BF16 weights to bf16
# (1.3e-1); with Q8_0 weights to Q8 blocks (5.8e-1).
LOGIT_TOLERANCE = {"f32": 5e-3, "f16": 3e-2, "bf16": 2.5e-1, "q8_0": 1.0}
# Share of positions whose top token agrees, by outtype.
TOP1_AGREEMENT = {"f32": 1.0, "f16": 0.98, "bf16": 0.95, "q8_0": 0.9}


def fixture_dir(name):
    path = ROOT / "fixtures" / name
    if not (path / "config.json").is_file():
        raise RuntimeError(f"{path} is missing: generate the fixtures (fixtures/generate.py)")
    return path


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def script_convert(model_dir, outtype, out, pre):
    run([
        os.environ["QFORGE_ORACLE_PYTHON"], WRAPPER, os.environ["QFORGE_LLAMA_SRC"], pre,
        model_dir, "--outtype", outtype, "--outfile", out,
    ])
    return out


def qforge_convert(qforge, src, out, *args):
    proc = run([qforge, "convert", src, out, *args, "--json"])
    return json.loads(proc.stdout)


def script_cache_dir():
    """Where the script's outputs are kept between runs: beside the oracle
    build (tests/interop/setup.sh), which is keyed by the same pins."""
    root = os.environ.get("QFORGE_ORACLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qforge-oracles")
    return pathlib.Path(root) / "convert_hf_to_gguf-outputs"


def script_key(model_dir, outtype, pre):
    """Every input of one script run: the llama.cpp tree (its folder name
    carries the pinned version and build key), the wrapper, the options, and
    each file of the model folder, name and bytes."""
    h = hashlib.sha256()
    for part in (os.environ["QFORGE_LLAMA_SRC"], WRAPPER.read_bytes(), pre, outtype):
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    for f in sorted(pathlib.Path(model_dir).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(model_dir)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()[:32]


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """convert_hf_to_gguf.py's output for (model dir, outtype). The script
    (the oracle) runs once per distinct input; its output is kept in the
    oracle cache under a key of all its inputs, so reruns read the same
    bytes the script wrote without paying for torch's start-up again."""
    cache = {}
    root = tmp_path_factory.mktemp("script")
    kept = script_cache_dir()

    def get(model_dir, outtype, pre):
        key = (str(model_dir), outtype)
        if key not in cache:
            stored = kept / f"{script_key(model_dir, outtype, pre)}.gguf"
            if not stored.is_file():
                out = root / f"{pathlib.Path(model_dir).name}-{outtype}.gguf"
                script_convert(model_dir, outtype, out, pre)
                kept.mkdir(parents=True, exist_ok=True)
                tmp = stored.with_suffix(f".tmp{os.getpid()}")
                shutil.move(out, tmp)
                os.replace(tmp, stored)
            cache[key] = stored
        return cache[key]

    return get


def field_value(field):
    types = [t.name for t in field.types]
    if types[0] == "ARRAY" and len(types) > 1 and types[1] == "ARRAY":
        return types, [bytes(p.tobytes()) for p in field.parts]
    return types, field.contents()


def summary(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: field_value(f) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = [
        (t.name, t.tensor_type.name, [int(x) for x in t.shape], bytes(t.data.tobytes()))
        for t in r.tensors
    ]
    return fields, tensors


def assert_matches_script(ours, ref, better=frozenset()):
    """Tensors byte-identical, in the same order; every key of the script's,
    the tokenizer's included, present with the same type and value. Keys in
    `better` are where the tokenizer module departs from the script on
    purpose (test_tokenizer.py's BETTER_THAN_SCRIPT, which checks them
    against llama.cpp): there only the type and the length must agree."""
    our_fields, our_tensors = summary(ours)
    ref_fields, ref_tensors = summary(ref)
    assert [t[:3] for t in our_tensors] == [t[:3] for t in ref_tensors]
    for (name, _, _, a), (_, _, _, b) in zip(our_tensors, ref_tensors):
        assert a == b, f"tensor {name} differs"
    assert any(k.startswith("tokenizer.ggml.") for k in ref_fields)
    for key, value in ref_fields.items():
        assert key in our_fields, f"missing key {key}"
        if key in better:
            assert our_fields[key][0] == value[0] and len(our_fields[key][1]) == len(value[1]), key
            continue
        assert our_fields[key] == value, f"key {key}: ours {our_fields[key]!r}, script {value!r}"
    extra = {k for k in our_fields if k not in ref_fields}
    assert all(k.startswith("qforge.") or k in EXTRA_KEYS or k in better for k in extra), extra


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("arch", FIXTURES)
def test_fixture_to_gguf_matches_the_script(qforge, reference, arch, outtype, tmp_path):
    src = fixture_dir(arch)
    pre = PRE_NAMES.get(arch, "unused")
    ours = tmp_path / "ours.gguf"
    report = qforge_convert(qforge, src, ours, "--outtype", outtype, "--tokenizer-pre", pre)
    assert report["architecture"] == arch
    assert_matches_script(ours, reference(src, outtype, pre), BETTER_THAN_SCRIPT.get(arch, frozenset()))


def llama_cpp_logits(model, ids, kv_f32=True):
    import llama_cpp

    kw = {}
    if kv_f32:
        kw = {"type_k": gguf.GGMLQuantizationType.F32, "type_v": gguf.GGMLQuantizationType.F32}
    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=max(256, len(ids) + 8), n_batch=512, logits_all=True,
        verbose=False, n_threads=2, **kw,
    )
    llm.eval([int(i) for i in ids])
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("arch", FIXTURES)
def test_llama_cpp_logits_match_transformers(qforge, arch, outtype, tmp_path):
    src = fixture_dir(arch)
    pre = PRE_NAMES.get(arch, "unused")
    ours = tmp_path / "ours.gguf"
    qforge_convert(qforge, src, ours, "--outtype", outtype, "--tokenizer-pre", pre)
    golden = st_load_file(str(src / "golden.safetensors"))
    ids, expect = golden["input_ids"], golden["logits"]
    got = llama_cpp_logits(ours, ids)
    assert got.shape == expect.shape
    diff = float(np.abs(got - expect).max())
    top1 = float((got.argmax(-1) == expect.argmax(-1)).mean())
    print(f"{arch} {outtype}: max |logit diff| {diff:.3e}, top-1 agreement {top1:.3f}, "
          f"max |logit| {float(np.abs(expect).max()):.2f}")
    assert diff <= LOGIT_TOLERANCE[outtype], diff
    assert top1 >= TOP1_AGREEMENT[outtype], top1


# ---------------------------------------------------------------------------
# SmolLM2, a real trained model


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_smollm2_copy_to_gguf_matches_the_script(qforge, reference, smollm2_hf, outtype, tmp_path):
    ours = tmp_path / "ours.gguf"
    report = qforge_convert(qforge, smollm2_hf, ours, "--outtype", outtype, "--tokenizer-pre", "smollm")
    assert_matches_script(ours, reference(smollm2_hf, outtype, "smollm"))
    # The sources are hashed while they are converted and the header is
    # completed afterwards: it names each source's digest, and the report
    # the output's, as sha256sum computes them.
    fields = gguf.GGUFReader(str(ours)).fields
    names = fields["qforge.source.files"].contents()
    assert names and all(n.endswith(".safetensors") for n in names), names
    assert fields["qforge.source.sha256"].contents() == [sha256sum(smollm2_hf / n) for n in names]
    assert [f["sha256"] for f in report["files"]] == [sha256sum(ours)]


def sha256sum(path):
    """coreutils' digest of a file."""
    r = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return r.stdout.split()[0]


def test_smollm2_q8_0_round_trips_through_hf(qforge, smollm2_q8_0, tmp_path):
    hf = tmp_path / "hf"
    report = qforge_convert(qforge, smollm2_q8_0, hf, "--to", "safetensors")
    assert report["lossless"], "GGUF Q8_0 -> HF F32 is exact"
    config = json.loads((hf / "config.json").read_text())
    assert config["dtype"] == "float32"
    back = tmp_path / "back.gguf"
    report = qforge_convert(qforge, hf, back, "--outtype", "q8_0")
    # The order is the script's (the source file was written in another one).
    _, src_tensors = summary(smollm2_q8_0)
    _, back_tensors = summary(back)
    src_by_name = {t[0]: t for t in src_tensors}
    assert sorted(src_by_name) == sorted(t[0] for t in back_tensors)
    for name, ty, shape, data in back_tensors:
        assert (ty, shape) == src_by_name[name][1:3], name
        assert data == src_by_name[name][3], f"tensor {name} differs after GGUF -> HF -> GGUF"
    src_fields, _ = summary(smollm2_q8_0)
    back_fields, _ = summary(back)
    for key, value in src_fields.items():
        if key.startswith("llama.") or key == "general.architecture":
            assert back_fields.get(key) == value, key


# Max |logit difference| between transformers (float32) on the HF copy of the
# Q8_0 model and llama.cpp (|logits| up to 31). On the Q8_0 GGUF itself:
# measured 1.74 over 30 layers, top token equal at 13 of 16 positions: the
# weights are the same values (the copy's logits equal those of
# transformers' own GGUF loader bit for bit), and what differs is llama.cpp
# quantizing activations to Q8 for its Q8_0 matmuls. On an F32 GGUF of the
# same values, which isolates the conversion from that arithmetic: F32_TOL.
SMOLLM2_HF_LOGIT_TOLERANCE = 2.5
SMOLLM2_HF_TOP1 = 0.75
SMOLLM2_HF_F32_TOLERANCE = 1e-3


def test_smollm2_q8_0_hf_copy_matches_llama_cpp(qforge, smollm2_q8_0, tmp_path):
    """The HF copy computes in transformers what llama.cpp computes on the GGUF."""
    import llama_cpp

    hf = tmp_path / "hf"
    qforge_convert(qforge, smollm2_q8_0, hf, "--to", "safetensors")
    prompt = "The quick brown fox jumps over the lazy dog, and then the small model predicts"
    llm = llama_cpp.Llama(model_path=str(smollm2_q8_0), vocab_only=True, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=False)
    llm.close()
    expect = llama_cpp_logits(smollm2_q8_0, ids)
    code = f"""
import numpy as np, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor([{list(map(int, ids))}])
def logits(*args, **kw):
    m = AutoModelForCausalLM.from_pretrained(*args, dtype=torch.float32, attn_implementation="eager", **kw)
    with torch.no_grad():
        return m.eval()(ids).logits[0].numpy()
np.save({str(tmp_path / "hf.npy")!r}, logits({str(hf)!r}))
np.save({str(tmp_path / "loader.npy")!r}, logits({str(smollm2_q8_0.parent)!r}, gguf_file={smollm2_q8_0.name!r}))
"""
    run([os.environ["QFORGE_ORACLE_PYTHON"], "-c", code])
    got = np.load(tmp_path / "hf.npy")
    assert np.array_equal(got, np.load(tmp_path / "loader.npy")), \
        "transformers' own GGUF loader gives other logits than our HF copy"
    assert got.shape == expect.shape
    diff = float(np.abs(got - expect).max())
    top1 = float((got.argmax(-1) == expect.argmax(-1)).mean())
    print(f"smollm2 q8_0: HF copy vs llama.cpp max |logit diff| {diff:.3e}, top-1 agreement {top1:.3f}")
    assert diff <= SMOLLM2_HF_LOGIT_TOLERANCE, diff
    assert top1 >= SMOLLM2_HF_TOP1, top1

    f32 = tmp_path / "f32.gguf"
    qforge_convert(qforge, hf, f32, "--outtype", "f32")
    diff = float(np.abs(got - llama_cpp_logits(f32, ids)).max())
    print(f"smollm2: HF copy vs llama.cpp on its F32 GGUF max |logit diff| {diff:.3e}")
    assert diff <= SMOLLM2_HF_F32_TOLERANCE, diff


def test_smollm2_gguf_to_hf_tokenizer_matches_llama_cpp(qforge, smollm2, gpl3_text, tmp_path):
    """tokenizer.json rebuilt from the GGUF's keys tokenizes GPL-3 as
    llama.cpp does, and the chat template comes along."""
    import llama_cpp

    hf = tmp_path / "hf"
    qforge_convert(qforge, smollm2, hf, "--to", "safetensors", "--dtype", "bf16")
    text = gpl3_text.read_text()
    llm = llama_cpp.Llama(model_path=str(smollm2), vocab_only=True, verbose=False)
    expect = llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()
    out = tmp_path / "ids.json"
    code = f"""
import json
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(hf)!r})
ids = tok(open({str(gpl3_text)!r}).read(), add_special_tokens=False)["input_ids"]
chat = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False)
json.dump({{"ids": ids, "chat": chat}}, open({str(out)!r}, "w"))
"""
    run([os.environ["QFORGE_ORACLE_PYTHON"], "-c", code])
    got = json.loads(out.read_text())
    assert len(expect) > 5000
    assert got["ids"] == list(expect)
    assert "<|im_start|>user" in got["chat"], got["chat"]


# Max |logit difference| between transformers on a fixture and transformers
# on the HF folder qforge rebuilds from its F32 GGUF (same weights, config
# rebuilt from GGUF keys). Measured: 0 for all six, Gemma 3's norms coming
# back exactly as (1 + w) - 1.
ROUND_TRIP_TOLERANCE = 1e-4


def golden_prompt(src):
    from safetensors import safe_open

    with safe_open(str(src / "golden.safetensors"), "np") as f:
        return f.metadata()["prompt"]


@pytest.mark.parametrize("arch", FIXTURES)
def test_gguf_to_hf_loads_in_transformers(qforge, arch, tmp_path):
    """The HF folder rebuilt from our GGUF loads in transformers; its
    tokenizer (rebuilt from the GGUF keys) gives the fixture's ids for the
    golden prompt and the model the golden logits."""
    src = fixture_dir(arch)
    gguf_path = tmp_path / "f32.gguf"
    qforge_convert(qforge, src, gguf_path, "--outtype", "f32", "--tokenizer-pre", PRE_NAMES.get(arch, "x"))
    hf = tmp_path / "hf"
    # phi3's copy is sharded, to check that transformers reads our index.
    shards = ["--max-shard-size", "100kB"] if arch == "phi3" else []
    report = qforge_convert(qforge, gguf_path, hf, "--to", "safetensors", *shards)
    assert (hf / "model.safetensors.index.json").is_file() == bool(shards)
    assert json.loads((hf / "config.json").read_text())["dtype"] == "float32"
    golden = st_load_file(str(src / "golden.safetensors"))
    prompt = golden_prompt(src)
    code = f"""
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(hf)!r})
ids = tok({prompt!r})["input_ids"]
assert ids == {golden["input_ids"].tolist()}, ids
m = AutoModelForCausalLM.from_pretrained({str(hf)!r}, dtype=torch.float32, attn_implementation="eager").eval()
assert type(m).__name__ == {json.loads((src / "config.json").read_text())["architectures"][0]!r} \\
    or {arch!r} == "mistral", type(m).__name__
with torch.no_grad():
    out = m(torch.tensor([{golden["input_ids"].tolist()}])).logits[0].numpy()
np.save({str(tmp_path / "hf.npy")!r}, out)
"""
    run([os.environ["QFORGE_ORACLE_PYTHON"], "-c", code])
    got = np.load(tmp_path / "hf.npy")
    diff = float(np.abs(got - golden["logits"]).max())
    print(f"{arch}: GGUF -> HF logits vs the source's: max diff {diff:.3e}")
    assert diff <= ROUND_TRIP_TOLERANCE, diff
    # Every tensor of a float GGUF converts exactly, except shifted norms.
    lossy = [t["name"] for t in report["tensors"] if not t["lossless"]]
    assert all(n.endswith("norm.weight") for n in lossy) and (arch == "gemma3" or not lossy), lossy


# Rope variants the fixtures do not cover, made from a fixture by editing
# its config.json: llama 3's frequency scaling (a generated rope_freqs
# tensor) and Phi-3's long rope (two factor tensors and an attention factor
# key written before the other metadata).
ROPE_VARIANTS = {
    "llama3-rope": ("llama", {
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
    }),
    "phi3-longrope": ("phi3", {
        "rope_parameters": {
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
            "long_factor": [1.0, 1.5, 2.25, 3.5, 5.0, 8.0, 12.5, 20.0],
            "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0],
        },
        "max_position_embeddings": 16384,
        "original_max_position_embeddings": 4096,
    }),
}


def rope_variant(name, tmp_path):
    base, changes = ROPE_VARIANTS[name]
    src = fixture_dir(base)
    out = tmp_path / name
    out.mkdir()
    # Copies, not symlinks: qforge refuses a model folder's symlinks that
    # point outside it (tests/paths.rs).
    for f in src.iterdir():
        if f.name != "golden.safetensors":
            shutil.copyfile(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return base, out


def transformers_logits(model_dir, ids, out):
    code = f"""
import numpy as np, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    np.save({str(out)!r}, m(torch.tensor([{list(map(int, ids))}])).logits[0].numpy())
"""
    run([os.environ["QFORGE_ORACLE_PYTHON"], "-c", code])
    return np.load(out)


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_rope_variants_match_the_script_and_come_back(qforge, variant, tmp_path):
    base, src = rope_variant(variant, tmp_path)
    pre = PRE_NAMES.get(base, "unused")
    ours = tmp_path / "ours.gguf"
    qforge_convert(qforge, src, ours, "--outtype", "f32", "--tokenizer-pre", pre)
    assert_matches_script(ours, script_convert(src, "f32", tmp_path / "ref.gguf", pre), BETTER_THAN_SCRIPT.get(base, frozenset()))

    hf = tmp_path / "hf"
    qforge_convert(qforge, ours, hf, "--to", "safetensors")
    ids = st_load_file(str(fixture_dir(base) / "golden.safetensors"))["input_ids"]
    expect = transformers_logits(src, ids, tmp_path / "src.npy")
    got = transformers_logits(hf, ids, tmp_path / "hf.npy")
    diff = float(np.abs(got - expect).max())
    print(f"{variant}: GGUF -> HF logits vs the source's: max diff {diff:.3e}")
    assert diff <= ROUND_TRIP_TOLERANCE, diff
