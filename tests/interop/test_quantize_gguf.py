"""`qforge quantize` against llama-quantize: the same F16 input, file type,
importance matrix and options give the same file — the same metadata (but
qforge's own `qforge.*` provenance keys), tensor infos and tensor data,
byte for byte.

Inputs, all taken to F16 by qforge:
- every fixture architecture (`qforge convert --type f16`; 64-wide rows, so
  the K and IQ4_XS mixes fall back to the legacy types; demo-llama's are
  256 wide and take them): every file type, without and with an
  importance matrix;
- the real SmolLM2-135M (`qforge quantize --type F16 --allow-requantize`
  from its Q4_1 file, which is llama-quantize's F16 whether or not
  `--exact-grid` is on: F16 has no grid to keep; 576-wide rows, 1536-wide ffn_down): a subset of the
  types (each costs llama-quantize up to 10 s on it, 30 s with a matrix;
  the IQ4 ones 50 s), with and without an importance matrix, in both of
  llama-imatrix's formats.
Importance matrices come from llama-imatrix on a short slice of the GPL-3,
once per model and session.

`qforge convert` writes the tokenizer keys llama-imatrix needs to load the
fixtures.
"""

import hashlib
import json
import subprocess

import gguf
import pytest

from conftest import ROOT, llama_tool
from quant_synth import assert_same_gguf, gguf_layout

# Every file type qforge writes, as llama-quantize names them.
WRITABLE = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
]
# Q2_K_S is made only with an importance matrix (llama-quantize refuses).
NEEDS_IMATRIX = {"Q2_K_S"}
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "demo-llama"]
# Pre-tokenizer names of the byte-level fixtures (fixtures/generate.py).
FIXTURE_PRE = {"llama": "llama-bpe", "demo-llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}
# SmolLM2: the common mixes, one of each family, without a matrix ...
SMOL_TYPES = ["Q8_0", "Q4_0", "Q3_K_M", "Q4_K_M", "Q6_K"]
# ... and with one (weighted searches: up to 30 s per type and tool on
# SmolLM2, so three; the fixtures take every type with a matrix).
SMOL_IMATRIX_CASES = [("Q4_0", "gguf"), ("Q4_K_M", "gguf"), ("Q6_K", "dat")]
THREADS = "2"


def run_llama(src, out, ftype, extra=()):
    cmd = [str(llama_tool("llama-quantize")), *extra, str(src), str(out), ftype, THREADS]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def run_qforge(qforge, src, out, ftype, extra=()):
    cmd = [str(qforge), "quantize", *extra, str(src), str(out), "--type", ftype, "--threads", THREADS]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode == 0, r.stderr[-3000:]


def check_same(qforge, src, tmp_path, ftype, extra=()):
    """Quantizes with both tools; asserts identical files, or that both
    refused. Returns 'same' or 'refused'."""
    ref, ours = tmp_path / f"ref-{ftype}.gguf", tmp_path / f"ours-{ftype}.gguf"
    ok_ref, log_ref = run_llama(src, ref, ftype, extra)
    ok_ours, log_ours = run_qforge(qforge, src, ours, ftype, extra)
    if not ok_ref:
        assert not ok_ours, f"{ftype}: llama-quantize refused, qforge wrote a file\n{log_ref}"
        assert not ours.exists()
        return "refused"
    assert ok_ours, f"{ftype}: llama-quantize wrote it, qforge failed:\n{log_ours}"
    assert_same_gguf(ours, ref)
    ref.unlink()
    ours.unlink()
    return "same"


def make_imatrix(model, out, text, ctx, chunks):
    """llama-imatrix's GGUF matrix, and the same in its legacy .dat format."""
    imatrix = str(llama_tool("llama-imatrix"))
    r = subprocess.run(
        [imatrix, "-m", str(model), "-f", str(text), "-o", str(out), "-c", str(ctx),
         "--chunks", str(chunks), "--no-ppl", "-t", THREADS],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    dat = out.with_suffix(".dat")
    r = subprocess.run([imatrix, "-m", str(model), "--in-file", str(out), "-o", str(dat),
                        "--output-format", "dat"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"gguf": out, "dat": dat}


@pytest.fixture(scope="session")
def short_text(gpl3_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "gpl3-head.txt"
    out.write_bytes(gpl3_text.read_bytes()[:4000])
    return out


@pytest.fixture(scope="session")
def smol_f16(qforge, smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "smollm2-f16.gguf"
    ok, log = run_qforge(qforge, smollm2, out, "F16", ["--allow-requantize"])
    assert ok, log
    return out


@pytest.fixture(scope="session")
def smol_imatrix(smol_f16, short_text):
    return make_imatrix(smol_f16, smol_f16.parent / "imatrix.gguf", short_text, 128, 4)


def has_tokenizer_keys(model):
    return any(name.startswith("tokenizer.") for name in gguf.GGUFReader(str(model)).fields)


@pytest.fixture(scope="session")
def fixture_f16(qforge, short_text, tmp_path_factory):
    """Each fixture taken to F16 by `qforge convert`, and its importance
    matrices."""
    d = tmp_path_factory.mktemp("fixtures-f16")
    cache = {}

    def make(arch):
        if arch not in cache:
            pre = FIXTURE_PRE.get(arch, "unused")
            model = d / f"{arch}-f16.gguf"
            subprocess.run([str(qforge), "convert", str(ROOT / "fixtures" / arch), str(model),
                            "--type", "f16", "--tokenizer-pre", pre], check=True, capture_output=True)
            assert has_tokenizer_keys(model), f"qforge convert wrote no tokenizer keys for {arch}"
            cache[arch] = (model, make_imatrix(model, d / f"{arch}-imatrix.gguf", short_text, 64, 2))
        return cache[arch]

    return make


@pytest.mark.parametrize("arch", ARCHS)
def test_fixture_every_type_same_file(qforge, fixture_f16, tmp_path, arch):
    model, imatrix = fixture_f16(arch)
    for ftype in WRITABLE:
        # Both refuse Q2_K_S without a matrix where a tensor would get Q2_K;
        # 64-wide rows fall back to a type that needs none.
        outcome = check_same(qforge, model, tmp_path, ftype)
        assert outcome == "same" or ftype in NEEDS_IMATRIX, ftype
        extra = ["--imatrix", str(imatrix["gguf"])]
        assert check_same(qforge, model, tmp_path, ftype, extra) == "same", f"{ftype} with imatrix"
    for ftype in ["Q4_K_M", "IQ4_XS"]:
        extra = ["--imatrix", str(imatrix["dat"])]
        assert check_same(qforge, model, tmp_path, ftype, extra) == "same", f"{ftype} with .dat imatrix"


@pytest.mark.parametrize("ftype", SMOL_TYPES)
def test_smollm2_same_file(qforge, smol_f16, tmp_path, ftype):
    assert check_same(qforge, smol_f16, tmp_path, ftype) == "same"


@pytest.mark.parametrize("ftype,fmt", SMOL_IMATRIX_CASES)
def test_smollm2_same_file_with_imatrix(qforge, smol_f16, smol_imatrix, tmp_path, ftype, fmt):
    extra = ["--imatrix", str(smol_imatrix[fmt])]
    assert check_same(qforge, smol_f16, tmp_path, ftype, extra) == "same"


@pytest.mark.parametrize(
    "extra",
    [
        ["--pure"],
        ["--leave-output-tensor"],
        ["--output-tensor-type", "q5_1", "--token-embedding-type", "q4_0"],
        ["--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.[23]\.ffn_down=q5_1"],
        ["--exclude-weights", "ffn_down"],
        ["--include-weights", "attn"],
    ],
    ids=["pure", "leave-output", "output-embd-types", "tensor-type", "exclude-weights", "include-weights"],
)
@pytest.mark.parametrize("arch", ["demo-llama", "mistral"])
def test_options_same_file(qforge, fixture_f16, tmp_path, arch, extra):
    model, imatrix = fixture_f16(arch)
    extra = ["--imatrix", str(imatrix["gguf"]), *extra]
    for ftype in ["Q4_K_M", "Q5_0", "IQ4_XS"]:
        assert check_same(qforge, model, tmp_path, ftype, extra) == "same", ftype


def test_requantizing_needs_permission(qforge, smollm2, tmp_path):
    ok, log = run_qforge(qforge, smollm2, tmp_path / "q8.gguf", "Q8_0")
    assert not ok, "qforge requantized without --allow-requantize"
    assert "already quantized (Q4_1)" in log and "--allow-requantize" in log, log
    assert len(log.splitlines()) < 5, f"one line per reason, not per tensor:\n{log}"
    assert not (tmp_path / "q8.gguf").exists()
    ok, _ = run_llama(smollm2, tmp_path / "ref.gguf", "Q8_0")
    assert not ok, "llama-quantize requantized without --allow-requantize"
    # With permission, and qforge's grid search off, both requantize
    # through f32 the same way (test_requant.py has the search on).
    ok, log = run_llama(smollm2, tmp_path / "ref.gguf", "Q5_K_M", ["--allow-requantize"])
    assert ok, log
    ok, log = run_qforge(qforge, smollm2, tmp_path / "ours.gguf", "Q5_K_M",
                         ["--allow-requantize", "--exact-grid", "off"])
    assert ok, log
    assert_same_gguf(tmp_path / "ours.gguf", tmp_path / "ref.gguf")


@pytest.mark.parametrize("source_type", ["IQ2_XXS", "IQ3_S", "MXFP4_MOE"])
def test_requantize_from_types_qforge_only_reads(qforge, smol_f16, smol_imatrix, tmp_path, source_type):
    """A file in one of llama.cpp's types that qforge reads but does not
    write (made by llama-quantize; IQ2_XXS needs the importance matrix,
    MXFP4_MOE is `--pure`: every tensor MXFP4) requantized to Q4_K_M by
    both tools through f32: the same file, so qforge's dequantization of
    the source is ggml's."""
    extra = ["--imatrix", smol_imatrix["gguf"]] + (["--pure"] if source_type == "MXFP4_MOE" else [])
    src = tmp_path / f"src-{source_type}.gguf"
    ok, log = run_llama(smol_f16, src, source_type, extra)
    assert ok, log
    held = {t.tensor_type.name for t in gguf.GGUFReader(str(src)).tensors}
    want = "MXFP4" if source_type == "MXFP4_MOE" else source_type
    assert want in held, f"{source_type}: the source holds {held}"
    ok, log = run_llama(src, tmp_path / "ref.gguf", "Q4_K_M", ["--allow-requantize"])
    assert ok, log
    ok, log = run_qforge(qforge, src, tmp_path / "ours.gguf", "Q4_K_M",
                         ["--allow-requantize", "--exact-grid", "off"])
    assert ok, log
    assert_same_gguf(tmp_path / "ours.gguf", tmp_path / "ref.gguf")


def test_keep_split(qforge, fixture_f16, tmp_path):
    model, _ = fixture_f16("demo-llama")
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    subprocess.run(
        [str(llama_tool("llama-gguf-split")), "--split", "--split-max-tensors", "16",
         str(model), str(split_dir / "demo")],
        check=True, capture_output=True,
    )
    first = split_dir / "demo-00001-of-00003.gguf"
    assert first.exists()
    ok, log = run_llama(first, tmp_path / "ref.gguf", "Q4_K_M", ["--keep-split"])
    assert ok, log
    ok, log = run_qforge(qforge, first, tmp_path / "ours.gguf", "Q4_K_M", ["--keep-split"])
    assert ok, log
    for i in range(1, 4):
        name = f"-0000{i}-of-00003.gguf"
        assert_same_gguf(tmp_path / f"ours{name}", tmp_path / f"ref{name}")
    # Without --keep-split, a split input becomes one file, as llama-quantize makes it.
    assert check_same(qforge, first, tmp_path, "Q6_K") == "same"


@pytest.mark.parametrize("arch", ARCHS)
def test_hugging_face_input_is_convert_then_quantize(qforge, fixture_f16, tmp_path, arch):
    """A Hugging Face folder quantizes to what `qforge convert --type auto`
    followed by llama-quantize gives (the source's own 16-bit values)."""
    pre = FIXTURE_PRE.get(arch, "unused")
    auto = tmp_path / "auto.gguf"
    subprocess.run([str(qforge), "convert", str(ROOT / "fixtures" / arch), str(auto), "--type", "auto",
                    "--tokenizer-pre", pre], check=True, capture_output=True)
    _, imatrix = fixture_f16(arch)
    for ftype, extra in [("Q4_K_M", []), ("Q8_0", []), ("IQ4_XS", ["--imatrix", str(imatrix["gguf"])])]:
        ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
        ok, log = run_llama(auto, ref, ftype, extra)
        assert ok, log
        ok, log = run_qforge(qforge, ROOT / "fixtures" / arch, ours, ftype, [*extra, "--tokenizer-pre", pre])
        assert ok, log
        assert_same_gguf(ours, ref)


def kv(path):
    """Metadata of a GGUF as {key: field}."""
    return gguf.GGUFReader(str(path)).fields


def test_file_type_version_and_provenance(qforge, fixture_f16, tmp_path):
    """general.file_type and general.quantization_version as llama-quantize
    writes them (the byte comparisons check their values); qforge's own keys
    name the source by its SHA-256, the tool version and the settings."""
    model, imatrix = fixture_f16("mistral")
    out = tmp_path / "q.gguf"
    ok, log = run_qforge(qforge, model, out, "Q5_K_M", ["--imatrix", str(imatrix["gguf"]), "--pure"])
    assert ok, log
    fields = kv(out)
    assert fields["general.file_type"].contents() == 17  # LLAMA_FTYPE_MOSTLY_Q5_K_M
    assert fields["general.quantization_version"].contents() == 2
    assert fields["qforge.command"].contents() == "quantize"
    assert fields["qforge.version"].contents()
    assert fields["qforge.source.files"].contents() == [model.name]
    assert fields["qforge.source.sha256"].contents() == [hashlib.sha256(model.read_bytes()).hexdigest()]
    assert fields["qforge.quantize.imatrix.sha256"].contents() == hashlib.sha256(
        imatrix["gguf"].read_bytes()).hexdigest()
    assert fields["qforge.quantize.settings"].contents() == [
        "--type", "Q5_K_M", "--imatrix", imatrix["gguf"].name, "--pure"]
    # Provenance keys come after everything llama-quantize writes.
    keys = [k for k, _, _ in gguf_layout(out)["kv"]]
    first = min(i for i, k in enumerate(keys) if k.startswith("qforge."))
    assert all(k.startswith("qforge.") for k in keys[first:])


def sha256sum(path):
    """coreutils' digest of a file."""
    r = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return r.stdout.split()[0]


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
def test_digests_are_the_files(qforge, smol_f16, tmp_path, ftype):
    """The source is hashed while it is quantized and the header completed
    afterwards: the header names the source's digest, and `--json` the
    output's, as sha256sum computes them (a 270 MB source and a 145-290 MB
    output: many 4 MiB batches, read back after the header is known).
    Without `--json` nothing reports the output's digest and nothing
    computes it: the file is the same."""
    out = tmp_path / "q.gguf"
    r = subprocess.run([str(qforge), "quantize", str(smol_f16), str(out), "--type", ftype, "--json"],
                       check=True, capture_output=True, text=True)
    report = json.loads(r.stdout)
    assert kv(out)["qforge.source.sha256"].contents() == [sha256sum(smol_f16)]
    assert [f["sha256"] for f in report["files"]] == [sha256sum(out)]
    assert [f["bytes"] for f in report["files"]] == [out.stat().st_size]
    plain = tmp_path / "plain.gguf"
    subprocess.run([str(qforge), "quantize", str(smol_f16), str(plain), "--type", ftype],
                   check=True, capture_output=True)
    assert sha256sum(plain) == sha256sum(out)


def test_thread_count_does_not_change_bytes(qforge, smol_f16, tmp_path):
    digests = set()
    for threads in ["1", "2", "3"]:
        out = tmp_path / f"t{threads}.gguf"
        subprocess.run([str(qforge), "quantize", str(smol_f16), str(out), "--type", "Q4_K_M",
                        "--threads", threads], check=True, capture_output=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
        out.unlink()
    assert len(digests) == 1
