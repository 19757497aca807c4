"""One PyTorch + PEFT training benchmark, printed as `key=value` lines like the studio's
`bench` command: the same synthetic tokens, config, optimiser and timing split.

    python peft_bench.py --model DIR [--method lora|dora|ia3|prompt-tuning|prefix-tuning|full]
        --r 8 --targets q_proj,k_proj,v_proj,o_proj --batch-size 4 --seq-len 256 --steps 5
        --threads 2 [--device cuda] [--dtype bf16] [--quantize nf4]

The LoRA flags (`--r`, `--targets`) apply to lora and dora; IA3 takes PEFT's default
modules, prompt and prefix tuning 20 virtual tokens: the studio's defaults for the same. A T5
folder trains as SEQ_2_SEQ_LM on random sources and targets of --seq-len tokens each.
"""
import argparse
import resource
import time

import torch
import transformers as tf
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

METHODS = ["lora", "dora", "ia3", "prompt-tuning", "prefix-tuning", "full"]
VIRTUAL_TOKENS = 20


def peft_config(a, task):
    """The PEFT config of `--method` for TASK, or None for full fine-tuning."""
    targets = "all-linear" if a.targets == "all-linear" else a.targets.split(",")
    if a.method in ("lora", "dora"):
        return LoraConfig(r=a.r, lora_alpha=2 * a.r, target_modules=targets, use_dora=a.method == "dora", task_type=task)
    if a.method == "ia3":
        return IA3Config(task_type=task)
    if a.method == "prompt-tuning":
        return PromptTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS, task_type=task)
    if a.method == "prefix-tuning":
        return PrefixTuningConfig(num_virtual_tokens=VIRTUAL_TOKENS, task_type=task)
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="lora", choices=METHODS)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    # The base weights' dtype: f32 with bf16 autocast by default; bf16 as people load a big
    # model onto a GPU (the adapters are kept in f32 by PEFT either way).
    p.add_argument("--load-dtype", default="f32", choices=["f32", "bf16"])
    # QLoRA: the base loaded 4-bit by bitsandbytes (NF4, no double quantization, computing in
    # --dtype), as the studio's `--quantize nf4` holds it.
    p.add_argument("--quantize", choices=["nf4"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load = torch.bfloat16 if a.load_dtype == "bf16" else torch.float32
    seq2seq = tf.AutoConfig.from_pretrained(a.model).model_type == "t5"
    if seq2seq:
        model = tf.T5ForConditionalGeneration.from_pretrained(a.model, torch_dtype=load).to(a.device)
    elif a.quantize:
        nf4 = tf.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=torch.bfloat16 if a.dtype == "bf16" else torch.float32)
        model = tf.AutoModelForCausalLM.from_pretrained(
            a.model, torch_dtype=load, quantization_config=nf4, device_map=a.device)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=load).to(a.device)
    config = peft_config(a, "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
    if config is not None:
        model = get_peft_model(model, config)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4, weight_decay=0.0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (a.batch_size, a.seq_len), generator=g).to(a.device)
    labels = torch.randint(0, vocab, (a.batch_size, a.seq_len), generator=g).to(a.device) if seq2seq else ids
    autocast = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    # GPU work is asynchronous: each timed phase ends when the device has finished it.
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    fwd = bwd = optim = 0.0
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=labels).loss
        loss.item()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if step > 0:  # the first step warms up
            fwd, bwd, optim = fwd + t1 - t0, bwd + t2 - t1, optim + t3 - t2
    n = a.batch_size * a.seq_len
    total = fwd + bwd + optim
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"steps={a.steps} batch={a.batch_size} seq_len={a.seq_len} method={a.method} trainable_params={trainable}")
    s = a.steps
    print(f"step_s={total / s:.4f} forward_s={fwd / s:.4f} backward_s={bwd / s:.4f} optimizer_s={optim / s:.4f}")
    print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    if a.device == "cuda":
        print(f"peak_gpu_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}")
    print(f"tokens_per_s={n * s / total:.1f}")


if __name__ == "__main__":
    main()
