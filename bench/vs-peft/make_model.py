"""A Llama-shaped model with random weights in bf16, for measuring at the sizes people train:
transformers' own initialisation (`torch.manual_seed(0)`), tied embeddings, SmolLM2's
vocabulary and tokenizer files copied beside it, so the studio and PyTorch + PEFT load the
same folder. Not a model to generate with: its speed and memory are a real model's.
`--size t5-small` makes a T5 of t5-small's shape instead (60M parameters, f32, T5's 32,128
tokens), its tokenizer files copied from a T5 folder (e.g. the engine's tiny fixture).

    python make_model.py --size 0.5b|1b|3b|t5-small --tokenizer SMOLLM2_OR_T5_DIR --out DIR
"""
import argparse
import os
import shutil

import torch
import transformers as tf

# hidden, intermediate, layers, attention heads, key/value heads: 0.5B as Qwen2.5-0.5B's
# width at SmolLM2's depth, 1B as docs/BENCHMARKS.md's 1.07B, 3B as Llama-3.2-3B's shape.
SHAPES = {
    "0.5b": (1536, 4096, 16, 24, 8),
    "1b": (2048, 8192, 16, 32, 8),
    "3b": (3072, 8192, 28, 24, 8),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# t5-small: d_model, d_ff, layers, heads (d_kv 64), ReLU feed-forward, tied head; no dropout,
# which the studio does not apply to T5 either, so that both sides do the same work.
T5_SMALL = dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, vocab_size=32128,
                feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def build(size):
    """The model of SIZE with transformers' initialisation."""
    torch.manual_seed(0)
    if size == "t5-small":
        return tf.T5ForConditionalGeneration(tf.T5Config(**T5_SMALL))
    hidden, inter, layers, heads, kv = SHAPES[size]
    config = tf.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=49152,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )
    # Made in bf16 directly: a 3B model in f32 would need 12 GB more to build.
    torch.set_default_dtype(torch.bfloat16)
    return tf.LlamaForCausalLM(config)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", required=True, choices=sorted(SHAPES) + ["t5-small"])
    p.add_argument("--tokenizer", required=True, help="a folder with SmolLM2's (or a T5's) tokenizer files")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    model = build(a.size)
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="20GB")
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(a.tokenizer, name), tmp)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)
    params = sum(t.numel() for t in model.parameters())
    print(f"{a.out}: {params / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
