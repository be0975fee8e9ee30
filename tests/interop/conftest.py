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
