//! Test driver for the interop suite: the imitation Hub of `server.rs` as a
//! process, so Python's `huggingface_hub` and qforge can be pointed at the
//! same server (HF_ENDPOINT).
//!
//! Usage: `fake_hub [SECONDS]`. Serves the repo `qforge-test/tiny` (config,
//! tokenizer files, README, and a 3 MiB LFS `model.safetensors` redirected
//! to a CDN origin), prints its endpoint (`http://127.0.0.1:PORT`) on the
//! first line of stdout, and runs until stdin closes or SECONDS (default
//! 300) pass. `GET /_log` answers the requests seen so far, as JSON.

#[path = "server.rs"]
mod server;

use std::io::{Read, Write};
use std::time::Duration;

use server::{noise, FakeHub, HubFile};

/// The files of the demo repo.
fn tiny_repo() -> Vec<HubFile> {
    vec![
        HubFile::new(
            ".gitattributes",
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
            false,
        ),
        HubFile::new(
            "README.md",
            "# tiny\nA test repo served by qforge's fake_hub.\n",
            false,
        ),
        HubFile::new(
            "config.json",
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}"#,
            false,
        ),
        HubFile::new(
            "generation_config.json",
            r#"{"bos_token_id": 1, "eos_token_id": 2}"#,
            false,
        ),
        HubFile::new(
            "tokenizer.json",
            r#"{"version": "1.0", "model": {"type": "BPE"}}"#,
            false,
        ),
        HubFile::new(
            "tokenizer_config.json",
            r#"{"model_max_length": 2048}"#,
            false,
        ),
        HubFile::new("model.safetensors", noise(3 << 20, 7), true),
    ]
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let hub = FakeHub::start(Duration::from_secs(seconds));
    hub.commit("qforge-test/tiny", "main", tiny_repo());
    println!("{}", hub.endpoint());
    std::io::stdout().flush().expect("stdout");
    // Stop when the parent closes stdin (or dies); the server's own deadline
    // bounds the run either way.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    hub.wait();
}
