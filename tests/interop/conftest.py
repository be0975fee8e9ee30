"""Shared fixtures of the interop suite: the oracles built by setup.sh and
the qforge binary under test.

Nothing here skips. A missing oracle is an error that names the fix, so a
test can never pass because its reference was absent.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / "tests" / "interop" / "oracles.env"
REQUIRED = [
    "QFORGE_ORACLE_PYTHON",
    "QFORGE_LLAMA_BIN",
    "QFORGE_LLAMA_SRC",
    "LLAMA_CPP_LIB_PATH",
    "QFORGE_SMOLLM2_GGUF",
]


def _load_oracle_env():
    if not ENV_FILE.is_file():
        raise RuntimeError(
            f"{ENV_FILE} is missing: run tests/interop/setup.sh to build the oracles"
        )
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ.setdefault(key, value)
    missing = [k for k in REQUIRED if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"{ENV_FILE} lacks {missing}: rerun tests/interop/setup.sh")
    for key in REQUIRED:
        if key != "QFORGE_ORACLE_PYTHON" and not pathlib.Path(os.environ[key]).exists():
            raise RuntimeError(f"{key}={os.environ[key]} does not exist: rerun tests/interop/setup.sh")


_load_oracle_env()


@pytest.fixture(autouse=True)
def _free_tmp_path(request):
    """Delete each test's tmp_path when the test ends.

    Several tests write full-size SmolLM2 copies (hundreds of MB each); pytest
    keeps every tmp_path until the session ends, which fills a CI disk. The
    path is printed on failure by pytest's own report, and the failing test
    can be rerun alone to keep its files.
    """
    yield
    path = request.node.funcargs.get("tmp_path")
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def llama_tool(name):
    path = pathlib.Path(os.environ["QFORGE_LLAMA_BIN"]) / name
    if not path.is_file():
        raise RuntimeError(f"llama.cpp tool {path} is missing: rerun tests/interop/setup.sh")
    return path


@pytest.fixture(scope="session")
def qforge():
    """Path of the release qforge binary, built once per session."""
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "qforge"],
        cwd=ROOT,
        check=True,
    )
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "qforge"


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (read-only: never write to it)."""
    return pathlib.Path(os.environ["QFORGE_SMOLLM2_GGUF"])


@pytest.fixture(scope="session")
def llama_src():
    """llama.cpp's source tree from llama-cpp-python's sdist."""
    return pathlib.Path(os.environ["QFORGE_LLAMA_SRC"])


@pytest.fixture(scope="session")
def gpl3_text():
    path = pathlib.Path("/usr/share/common-licenses/GPL-3")
    if not path.is_file():
        raise RuntimeError(f"{path} is missing (Debian package base-files)")
    return path


def run_oracle(cmd):
    """Runs an oracle command; its output is shown only when it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def smollm2_hf(smollm2, tmp_path_factory):
    """A Hugging Face copy of SmolLM2 made by transformers' own GGUF loader
    (dequantized to float32) and save_pretrained."""
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src = {str(smollm2.parent)!r}
name = {smollm2.name!r}
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained({str(out)!r})
AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained({str(out)!r})
"""
    run_oracle([os.environ["QFORGE_ORACLE_PYTHON"], "-c", code])
    return out


@pytest.fixture(scope="session")
def smollm2_q8_0(smollm2, tmp_path_factory):
    """SmolLM2 requantized to Q8_0 by llama-quantize, every tensor Q8_0 (--pure)."""
    out = tmp_path_factory.mktemp("q8") / "smollm2-q8_0.gguf"
    run_oracle([llama_tool("llama-quantize"), "--allow-requantize", "--pure", smollm2, out, "Q8_0", "2"])
    return out
