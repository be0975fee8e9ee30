"""Issue 8: `qforge run` on the real SmolLM2 GGUF, and what llama.cpp,
gguf-py and mlx-lm make of its artifacts."""

import json
import os
import shutil
import subprocess

import gguf
import pytest

from conftest import ROOT
from test_formats import perplexity, reader_summary

MANIFEST = ROOT / "manifests" / "smollm2-135m.yaml"


def qforge_run(qforge, *args, check=True):
    proc = subprocess.run(
        [qforge, "run", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


def test_the_q4_1_artifact_is_the_source_with_the_manifests_metadata(
    qforge, smollm2, gpl3_text, tmp_path
):
    """The artifact of the source's own type: same tensors (same llama.cpp
    perplexity), the manifest's settings in its metadata and Modelfile;
    a rerun rebuilds nothing; --check finds a flipped byte."""
    text = MANIFEST.read_text()
    # The SmolLM2 manifest's model settings, one artifact, no verification
    # (the reference run is issue 6's).
    head = text.split("\nverify:")[0]
    manifest = tmp_path / "smol.yaml"
    manifest.write_text(
        head
        + "\nartifacts:\n  - name: smol-q4_1\n    format: gguf\n    quantization: Q4_1\n"
        + "    verify: false\n"
    )
    out = tmp_path / "out"
    report = json.loads(qforge_run(qforge, manifest, "-o", out).stdout)
    assert report["pass"] and not report["nothing_rebuilt"]

    artifact = out / "smol-q4_1.gguf"
    assert perplexity(artifact, gpl3_text, tmp_path) == perplexity(smollm2, gpl3_text, tmp_path)
    src_fields, src_tensors = reader_summary(smollm2)
    fields, tensors = reader_summary(artifact)
    assert tensors == src_tensors
    assert fields["general.name"][1] == "SmolLM2-135M-Instruct"
    assert fields["general.license"][1] == "apache-2.0"
    assert fields["general.sampling.temp"][1] == pytest.approx(0.2)
    assert fields["general.sampling.top_p"][1] == pytest.approx(0.9)
    assert fields["qforge.parameters.stop"][1] == ["<|im_start|>", "<|im_end|>"]
    assert fields["qforge.parameters.num_ctx"][1] == 2048
    assert fields["qforge.template"][1].startswith("{{- if .System }}<|im_start|>system\n")
    assert fields["tokenizer.chat_template"] == src_fields["tokenizer.chat_template"]

    modelfile = (out / "smol-q4_1.Modelfile").read_text()
    assert "\nFROM ./smol-q4_1.gguf\nTEMPLATE \"\"\"{{- if .System }}" in modelfile
    assert "\nSYSTEM \"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\n" in modelfile
    assert 'PARAMETER stop "<|im_start|>"' not in modelfile
    assert "\nPARAMETER stop <|im_end|>\nLICENSE apache-2.0\n" in modelfile

    lock = json.loads((out / "qforge.lock").read_text())
    sha = subprocess.run(["sha256sum", artifact], check=True, capture_output=True, text=True)
    assert lock["artifacts"]["smol-q4_1"]["sha256"] == sha.stdout.split()[0]
    src_sha = subprocess.run(["sha256sum", smollm2], check=True, capture_output=True, text=True)
    assert lock["source"]["files"][0]["sha256"] == src_sha.stdout.split()[0]

    again = json.loads(qforge_run(qforge, manifest, "-o", out).stdout)
    assert again["nothing_rebuilt"] and again["pass"]

    assert qforge_run(qforge, manifest, "-o", out, "--check").returncode == 0
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    bad = qforge_run(qforge, manifest, "-o", out, "--check", check=False)
    assert bad.returncode == 1
    status = json.loads(bad.stdout)["artifacts"][0]
    assert status["name"] == "smol-q4_1" and not status["ok"]
    assert status["status"].startswith("damaged: smol-q4_1.gguf has sha256 ")


def test_smollm2_manifest_end_to_end(qforge, smollm2, gpl3_text, tmp_path):
    """manifests/smollm2-135m.yaml as a user runs it: three artifacts that
    pass their gates; llama.cpp runs both GGUFs, mlx-lm loads and generates
    with the MLX folder; a rerun is a no-op; --check passes."""
    out = tmp_path / "out"
    report = json.loads(qforge_run(qforge, MANIFEST, "-o", out).stdout)
    names = [a["name"] for a in report["report"]["artifacts"]]
    assert names == ["smollm2-135m-q4_1", "smollm2-135m-q8_0", "smollm2-135m-mlx-4bit"]
    assert report["pass"], report
    for a in report["report"]["artifacts"]:
        assert a["verify"]["measurements"]["ppl"] > 1.0

    for name in ["smollm2-135m-q4_1", "smollm2-135m-q8_0"]:
        ppl, _ = perplexity(out / f"{name}.gguf", gpl3_text, tmp_path)
        assert float(ppl) > 1.0
        assert gguf.GGUFReader(str(out / f"{name}.gguf")).fields["general.name"]

    from mlx_lm import generate, load

    model, tokenizer = load(str(out / "smollm2-135m-mlx-4bit"))
    text = generate(model, tokenizer, prompt="The capital of France is", max_tokens=8)
    assert isinstance(text, str) and text

    again = json.loads(qforge_run(qforge, MANIFEST, "-o", out).stdout)
    assert again["nothing_rebuilt"]
    assert qforge_run(qforge, MANIFEST, "-o", out, "--check").returncode == 0
    shutil.rmtree(out)
