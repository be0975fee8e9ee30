"""A synthetic Llama as a Hugging Face folder: hidden 2048, 10 layers, FFN
5632, 514 M parameters of N(0, 0.02) in bf16 (norms 1 + N(0, 0.1)), two
safetensors shards, the tokenizer of fixtures/llama. The input of
whole_command.sh: big enough that the command's own costs show, made in
seconds with numpy alone (the device tool's machine has nothing else).

    python3 scripts/bench/synth_llama.py OUT_DIR fixtures/llama
"""
import json, os, shutil, struct, sys
import numpy as np

out, fixture = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
H, I, L, V, HEADS = 2048, 5632, 10, 512, 32
cfg = json.load(open(os.path.join(fixture, "config.json")))
cfg.update(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=HEADS,
           num_key_value_heads=HEADS, head_dim=H // HEADS, vocab_size=V, dtype="bfloat16")
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"]:
    shutil.copy(os.path.join(fixture, f), out)
rng = np.random.default_rng(0)
def bf16(shape, std, mean=0.0):
    a = (rng.standard_normal(shape, dtype=np.float32) * std + np.float32(mean)).view(np.uint32)
    return ((a + 0x7FFF + ((a >> 16) & 1)) >> 16).astype(np.uint16)
tensors = [("model.embed_tokens.weight", (V, H)), ("model.norm.weight", (H,))]
for l in range(L):
    p = f"model.layers.{l}."
    tensors += [(p + "input_layernorm.weight", (H,)), (p + "post_attention_layernorm.weight", (H,))]
    tensors += [(p + f"self_attn.{n}_proj.weight", (H, H)) for n in "qkvo"]
    tensors += [(p + "mlp.gate_proj.weight", (I, H)), (p + "mlp.up_proj.weight", (I, H)),
                (p + "mlp.down_proj.weight", (H, I))]
shards = [tensors[: 2 + 5 * 9], tensors[2 + 5 * 9:]]
index = {"metadata": {}, "weight_map": {}}
for s, part in enumerate(shards):
    name = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
    header, off = {}, 0
    for n, shape in part:
        size = int(np.prod(shape)) * 2
        header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
        index["weight_map"][n] = name
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for n, shape in part:
            a = bf16(shape, 0.1, 1.0) if n.endswith("norm.weight") else bf16(shape, 0.02)
            f.write(a.tobytes())
json.dump(index, open(os.path.join(out, "model.safetensors.index.json"), "w"))
print("wrote", out)
