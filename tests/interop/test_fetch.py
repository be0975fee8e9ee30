"""qforge fetch and Python's huggingface_hub share one Hugging Face cache.

Both are pointed (HF_ENDPOINT) at the same imitation Hub, the `fake_hub`
example (examples/fake_hub: the revision and tree APIs, resolve with
X-Repo-Commit / X-Linked-Etag / X-Linked-Size, LFS files redirected to a
CDN origin, Range requests), which logs every request it serves. What one
client cached, the other must find without downloading a byte of it.

huggingface_hub reads its environment at import, so it runs in a
subprocess with the same HF_HOME and HF_ENDPOINT qforge gets.
"""

import json
import os
import pathlib
import subprocess
import sys
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
REPO = "qforge-test/tiny"
# The conversion set qforge fetches by default from this repo.
DEFAULT_SET = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
]


@pytest.fixture(scope="session")
def fake_hub_bin():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--example", "fake_hub"],
        cwd=ROOT,
        check=True,
    )
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "fake_hub"


class Hub:
    def __init__(self, binary):
        # Stops when its stdin closes, and after 300 s whatever happens.
        self.proc = subprocess.Popen(
            [binary, "300"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError(f"fake_hub did not start (said {self.endpoint!r})")

    def log(self):
        with urllib.request.urlopen(f"{self.endpoint}/_log", timeout=10) as r:
            return json.load(r)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def hub(fake_hub_bin):
    h = Hub(fake_hub_bin)
    yield h
    h.close()


def hf_env(hub, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


PY_SNAPSHOT = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
patterns = json.loads(sys.argv[1])
folder = snapshot_download(%r, allow_patterns=patterns)
single = hf_hub_download(%r, "config.json")  # by branch name: a HEAD, no GET
print(json.dumps({"folder": folder, "single": single}))
""" % (REPO, REPO)


def run_python(env, patterns):
    out = subprocess.run(
        [sys.executable, "-c", PY_SNAPSHOT, json.dumps(patterns)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_qforge(qforge, env, *args):
    out = subprocess.run(
        [qforge, "fetch", REPO, "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def downloads(entries):
    """Requests that carried file bytes: GETs of resolve URLs and the CDN."""
    return [
        e
        for e in entries
        if e["method"] == "GET" and ("/resolve/" in e["path"] or e["path"].startswith("/cdn/"))
    ]


def test_huggingface_hub_finds_what_qforge_cached(qforge, hub, tmp_path):
    env = hf_env(hub, tmp_path / "hf")
    snap = run_qforge(qforge, env)
    assert [f["path"] for f in snap["files"]] == DEFAULT_SET
    assert all(f["source"] == "downloaded" for f in snap["files"])
    first = hub.log()
    assert len(downloads(first)) == len(DEFAULT_SET)

    py = run_python(env, DEFAULT_SET)
    new = hub.log()[len(first):]
    assert downloads(new) == [], f"huggingface_hub downloaded again: {downloads(new)}"
    assert any(e["method"] == "HEAD" for e in new), "hf_hub_download asked the Hub, then used the cache"
    assert pathlib.Path(py["folder"]) == pathlib.Path(snap["dir"])
    assert pathlib.Path(py["single"]) == pathlib.Path(snap["dir"]) / "config.json"
    for f in snap["files"]:
        got = pathlib.Path(py["folder"]) / f["path"]
        assert got.read_bytes() == pathlib.Path(f["local_path"]).read_bytes()


def test_qforge_finds_what_huggingface_hub_cached(qforge, hub, tmp_path):
    env = hf_env(hub, tmp_path / "hf")
    py = run_python(env, DEFAULT_SET)
    first = hub.log()
    assert len(downloads(first)) == len(DEFAULT_SET)

    # --verify re-hashes the LFS blobs huggingface_hub wrote against the
    # Hub's sha256: they are reused only if they are right.
    snap = run_qforge(qforge, env, "--verify")
    new = hub.log()[len(first):]
    assert downloads(new) == [], f"qforge downloaded again: {downloads(new)}"
    assert [e["path"].split("?")[0] for e in new] == [f"/api/models/{REPO}/revision/main"]
    assert pathlib.Path(snap["dir"]) == pathlib.Path(py["folder"])
    assert all(f["source"] == "cached" for f in snap["files"])
    model = next(f for f in snap["files"] if f["path"] == "model.safetensors")
    assert model["lfs"] is True
    blobs = tmp_path / "hf" / "hub" / "models--qforge-test--tiny" / "blobs"
    assert (blobs / model["sha256"]).is_file(), "huggingface_hub names LFS blobs by sha256 too"


def test_offline_qforge_serves_huggingface_hub_cache(qforge, hub, tmp_path):
    env = hf_env(hub, tmp_path / "hf")
    run_python(env, DEFAULT_SET)
    before = hub.log()
    env["HF_HUB_OFFLINE"] = "1"
    snap = run_qforge(qforge, env)
    assert [f["path"] for f in snap["files"]] == sorted(DEFAULT_SET)
    assert hub.log() == before, "offline made requests"
