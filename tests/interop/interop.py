"""The reference libraries' side of the interop harness (tests/interop/run). Each subcommand
prints one `max_abs_diff=<x>` line (and, for llama.cpp, `top5=<equal|differ>`).

  peft      BASE ADAPTER STUDIO_LOGITS IDS   PEFT loads the studio's export; compare logits
  adapters  BASE ADAPTER STUDIO_LOGITS IDS   the adapters library loads it (run with its
                                             transformers on PYTHONPATH)
  make-peft BASE KIND OUT IDS                PEFT makes an adapter with non-zero weights and
                                             writes its logits to OUT/reference.safetensors
  make-adapters BASE KIND OUT IDS            the same with the adapters library
  peft-nf4  BASE ADAPTER STUDIO_LOGITS IDS   PEFT on the base whose projections bitsandbytes
                                             quantized to NF4 and dequantized (its
                                             quantize_4bit / dequantize_4bit)
  logits    STUDIO_LOGITS REFERENCE          compare two logits files
  merged    BASE ADAPTER MERGED_DIR          PEFT's merge_and_unload weights against the
                                             studio's merged folder, and their logits
  llama-cpp MODEL_GGUF LORA_GGUF|- STUDIO_LOGITS IDS
                                             llama.cpp's logits (top-5 ids compared too)
  gguf-read MODEL_GGUF LORA_GGUF|-           the gguf reader: the keys and shapes llama.cpp needs
                                             (prints `structure=ok`)
  make-tiny FAMILY TOKENIZER_DIR OUT         transformers writes a tiny random checkpoint of
                                             FAMILY (gemma3, gemma3-vision, gemma2, qwen3, qwen3-yarn, mistral, phi3) with the tokenizer
                                             of TOKENIZER_DIR
  base      BASE STUDIO_LOGITS IDS           transformers' logits of the base alone
  peft-t5   BASE ADAPTER STUDIO_LOGITS IDS   a studio T5 LoRA loaded by PEFT: its logits
  make-peft-t5 BASE KIND OUT IDS             PEFT's T5 adapter of KIND (lora, ia3, prompt, prefix) with its logits
  plan-line BASE KIND STUDIO_LINE             PEFT's print_trainable_parameters line for KIND
                                             (make-peft's kinds) against the studio's `plan`
                                             line (prints `same=yes|no`)
"""
import json
import os
import sys
import traceback

import numpy as np
import torch
from safetensors.numpy import load_file, save_file


def ids_of(text):
    return [int(i) for i in text.split(",")]


def report(reference, studio_file):
    studio = load_file(studio_file)["logits"]
    reference = np.asarray(reference, dtype=np.float32)
    print(f"max_abs_diff={np.abs(reference - studio).max():.3e}")
    print(f"max_abs_logit={np.abs(reference).max():.3e}")


def base_model(base_dir):
    import transformers as tf
    t5 = tf.AutoConfig.from_pretrained(base_dir).model_type == "t5"
    cls = tf.T5ForConditionalGeneration if t5 else tf.AutoModelForCausalLM
    return cls.from_pretrained(base_dir, torch_dtype=torch.float32).eval()


def forward(model, ids):
    """The logits of IDS; a T5's decoder reads its start token and then the same ids (as
    `peft-studio-cli logits` computes them for a T5)."""
    with torch.no_grad():
        if model.config.model_type == "t5":
            decoder = [model.config.decoder_start_token_id] + list(ids)
            return model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([decoder])).logits[0]
        return model(input_ids=torch.tensor([ids])).logits[0]


def peft_logits(model, adapter_dir, ids):
    from peft import PeftConfig
    logits = forward(model, ids)
    cfg = PeftConfig.from_pretrained(adapter_dir)
    # Prompt tuning's outputs include its virtual tokens; the studio's cover the real ones.
    if cfg.peft_type == "PROMPT_TUNING":
        logits = logits[cfg.num_virtual_tokens:]
    return logits.numpy()


def cmd_peft(base_dir, adapter_dir, studio_file, ids):
    from peft import PeftModel
    model = PeftModel.from_pretrained(base_model(base_dir), adapter_dir).eval()
    report(peft_logits(model, adapter_dir, ids_of(ids)), studio_file)


def cmd_peft_t5(base_dir, adapter_dir, studio_file, ids):
    """A studio T5 LoRA loaded by PEFT: the logits of source IDS, the decoder reading its start
    token and then the same ids (as `peft-studio-cli logits` computes them for a T5)."""
    import transformers as tf
    from peft import PeftModel
    base = tf.T5ForConditionalGeneration.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    report(t5_logits(model, ids), studio_file)


def cmd_peft_nf4(base_dir, adapter_dir, studio_file, ids):
    # bitsandbytes' canonical NF4 (blocks of 64, f32 maxima), applied by its own functions.
    # (transformers' `load_in_4bit` on a CPU repacks the weights for its CPU kernels with the
    # maxima rounded to bf16: other numbers than QLoRA's NF4 anywhere else.)
    import bitsandbytes.functional as F
    from peft import PeftModel
    base = base_model(base_dir)
    with torch.no_grad():
        for name, module in base.named_modules():
            if name.startswith("model.layers.") and name.endswith("_proj"):
                w = module.weight.data
                q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
                module.weight.data = F.dequantize_4bit(q, state).to(w.dtype)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    report(peft_logits(model, adapter_dir, ids_of(ids)), studio_file)


def adapters_model(base_dir):
    import adapters
    model = base_model(base_dir)
    adapters.init(model)
    return model


def cmd_adapters(base_dir, adapter_dir, studio_file, ids):
    model = adapters_model(base_dir)
    name = model.load_adapter(adapter_dir, use_safetensors=True)
    model.set_active_adapters(name)
    report(forward(model.eval(), ids_of(ids)).numpy(), studio_file)


def perturb(module, seed=0):
    """Non-zero, seeded weights for every trainable tensor: a fresh adapter's zero-initialised
    half would make any loader look right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


# The layers of a multimodal Gemma 3's text decoder, as PEFT sees its module paths.
TEXT = r"model\.language_model\.layers\.\d+\."


def peft_config(kind, base_dir):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return {
        "lora": LoraConfig(**lora),
        "lora-all": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        "rslora": LoraConfig(**lora, use_rslora=True),
        "dora": LoraConfig(**lora, use_dora=True),
        "ia3": IA3Config(),
        "ia3-fused": IA3Config(target_modules=["qkv_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "ia3-named": IA3Config(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        # A multimodal Gemma 3's decoder alone (bare names would reach its vision tower too).
        "lora-text": LoraConfig(r=8, lora_alpha=16, target_modules=TEXT + r"(?:mlp\.(?:down|gate|up)_proj|self_attn\.(?:k|o|q|v)_proj)"),
        "ia3-text": IA3Config(target_modules=TEXT + r"(?:self_attn\.(?:q|v)_proj|mlp\.down_proj)", feedforward_modules=["down_proj"]),
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }[kind]


def cmd_make_peft(base_dir, kind, out, ids):
    """Also PEFT's logits in f64: where f32 rounding alone exceeds the rows' tolerance (a real
    model with a strongly perturbed adapter), the studio is held to being as near the exact
    logits as PEFT's own f32 is."""
    from peft import PeftModel, get_peft_model
    import transformers as tf
    model = get_peft_model(base_model(base_dir), peft_config(kind, base_dir))
    perturb(model)
    model.eval().save_pretrained(out, safe_serialization=True)
    logits = peft_logits(model, out, ids_of(ids))
    exact = tf.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64).eval()
    exact = PeftModel.from_pretrained(exact, out).eval()
    logits64 = peft_logits(exact, out, ids_of(ids))
    save_file({"logits": logits, "logits64": logits64}, os.path.join(out, "reference.safetensors"))
    print("max_abs_diff=0")


def t5_logits(model, ids):
    """Logits of source IDS with the decoder reading its start token and then the same ids."""
    return forward(model, ids_of(ids)).numpy()


def cmd_make_peft_t5(base_dir, kind, out, ids):
    """A PEFT adapter on a T5 (`lora`: LoRA r=4 on every attention projection with rsLoRA; `ia3`:
    PEFT's T5 defaults; `prompt`, `prefix`: 4 virtual tokens), seeded non-zero, saved with
    PEFT's logits."""
    import transformers as tf
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    config = {"lora": LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q", "k", "v", "o"],
                                 task_type="SEQ_2_SEQ_LM"),
              "ia3": IA3Config(task_type="SEQ_2_SEQ_LM"),
              "prompt": PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
              "prefix": PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)}[kind]
    base = tf.T5ForConditionalGeneration.from_pretrained(base_dir, torch_dtype=torch.float32)
    model = get_peft_model(base, config)
    perturb(model)
    model.eval().save_pretrained(out, safe_serialization=True)
    save_file({"logits": t5_logits(model, ids)}, os.path.join(out, "reference.safetensors"))
    print("max_abs_diff=0")


def cmd_make_adapters(base_dir, kind, out, ids):
    from adapters import DoubleSeqBnConfig, SeqBnConfig
    model = adapters_model(base_dir)
    config = {"houlsby": DoubleSeqBnConfig(reduction_factor=4), "pfeiffer": SeqBnConfig(reduction_factor=4)}[kind]
    model.add_adapter(kind, config=config)
    model.train_adapter(kind)
    perturb(model)
    model.eval()
    model.save_adapter(out, kind, use_safetensors=True)
    save_file({"logits": forward(model, ids_of(ids)).numpy()}, os.path.join(out, "reference.safetensors"))
    print("max_abs_diff=0")


def tiny_config(family):
    """Every part of FAMILY made small enough to matter: a 4-position sliding window against
    12 ids, Gemma's query_pre_attn_scalar unlike head_dim, two rotary bases."""
    import transformers as tf
    sizes = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=256, eos_token_id=256, pad_token_id=None)
    if family in ("gemma3", "gemma3-vision"):
        text = tf.Gemma3TextConfig(
            **sizes, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
            tie_word_embeddings=True)
        if family == "gemma3":
            return tf.Gemma3ForCausalLM, text
        # Gemma 3 4B-27B's shape: a (tiny) SigLIP vision tower and projector around the decoder;
        # its q_proj/v_proj/out_proj are what a bare `target_modules` would reach too.
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return tf.Gemma3ForConditionalGeneration, tf.Gemma3Config(
            text_config=text.to_dict(), vision_config=vision, mm_tokens_per_image=4,
            image_token_index=259, boi_token_index=257, eoi_token_index=258,
            tie_word_embeddings=True)
    if family == "gemma2":
        return tf.Gemma2ForCausalLM, tf.Gemma2Config(
            **sizes, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
            attn_logit_softcapping=0.5, final_logit_softcapping=2.0, tie_word_embeddings=True)
    if family == "phi3":
        # 12 ids stay within the 16-position pretraining context: LongRoPE's short factors.
        return tf.Phi3ForCausalLM, tf.Phi3Config(
            **sizes, original_max_position_embeddings=16, sliding_window=5,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                             "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0]},
            tie_word_embeddings=False)
    if family == "qwen3":
        return tf.Qwen3ForCausalLM, tf.Qwen3Config(**sizes, head_dim=8, tie_word_embeddings=True)
    if family == "qwen3-yarn":
        # YaRN with a 16-position pretraining context: its ramp falls inside an 8-wide head.
        return tf.Qwen3ForCausalLM, tf.Qwen3Config(
            **sizes, head_dim=8, tie_word_embeddings=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 16})
    if family == "mistral":
        return tf.MistralForCausalLM, tf.MistralConfig(**sizes, sliding_window=4,
                                                       tie_word_embeddings=False)
    raise SystemExit(f"no tiny {family}")


def cmd_make_tiny(family, tokenizer_dir, out):
    import shutil
    cls, config = tiny_config(family)
    torch.manual_seed(1)
    model = cls(config).to(torch.float32)
    # Weights well away from their initial values (norms included: Gemma's start at 0, the
    # others' at 1), so that a misplaced offset or norm shows in the logits.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            scale = 0.3 if p.dim() == 1 else 0.15
            p.add_(torch.randn(p.shape, generator=g) * scale)
    model.eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out, name))
    print("max_abs_diff=0")


def cmd_base(base_dir, studio_file, ids):
    report(forward(base_model(base_dir), ids_of(ids)).numpy(), studio_file)


def cmd_plan_line(base_dir, kind, studio_line):
    import contextlib, io
    from peft import get_peft_model
    model = get_peft_model(base_model(base_dir), peft_config(kind, base_dir))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.print_trainable_parameters()
    line = out.getvalue().strip()
    print(f"peft: {line}")
    print(f"same={'yes' if line == studio_line.strip() else 'no'}")


def cmd_logits(studio_file, reference_file):
    reference = load_file(reference_file)
    report(reference["logits"], studio_file)
    if "logits64" in reference:
        exact, studio = reference["logits64"], load_file(studio_file)["logits"].astype(np.float64)
        print(f"f64_error_studio={np.abs(studio - exact).max():.3e}")
        print(f"f64_error_reference={np.abs(reference['logits'].astype(np.float64) - exact).max():.3e}")


def safetensors_folder(folder):
    """Every tensor of a model folder's safetensors files, by name, in f32."""
    from safetensors.torch import load_file as load_torch
    index = os.path.join(folder, "model.safetensors.index.json")
    shards = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    return {k: v.float().numpy() for f in shards for k, v in load_torch(os.path.join(folder, f)).items()}


def cmd_merged(base_dir, adapter_dir, merged_dir):
    """The studio's merged folder against what transformers' save_pretrained writes for PEFT's
    merge_and_unload: the same tensor names (a multimodal checkpoint's included, in the naming
    transformers saves) and values."""
    import tempfile
    from peft import PeftModel
    merged = PeftModel.from_pretrained(base_model(base_dir), adapter_dir).merge_and_unload()
    with tempfile.TemporaryDirectory() as saved:
        merged.save_pretrained(saved, safe_serialization=True)
        reference = safetensors_folder(saved)
    studio = safetensors_folder(merged_dir)
    # Tied weights are saved once: a tied head, and a T5's per-stack copies of `shared`.
    for k in ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if k not in studio:
            reference.pop(k, None)
    if set(reference) != set(studio):
        sys.exit(f"tensor names differ: {sorted(set(reference) ^ set(studio))[:5]}")
    worst = max(float(np.abs(reference[k] - studio[k]).max()) for k in reference)
    # The adapter must have moved some weight, or the comparison proves nothing.
    base = safetensors_folder(base_dir)
    if max(float(np.abs(base[k] - studio[k]).max()) for k in studio if k in base) == 0:
        sys.exit("the merged weights equal the base model's: the adapter did nothing")
    # The merged folder must load in transformers as any model does, and compute the same.
    loaded = base_model(merged_dir)
    ids = [1, 5, 9, 33, 60, 2, 17, 40]
    worst = max(worst, float((forward(loaded, ids) - forward(merged, ids)).abs().max()))
    print(f"max_abs_diff={worst:.3e}")


def cmd_llama_cpp(model_gguf, lora_gguf, studio_file, ids):
    from llama_cpp import Llama
    ids = ids_of(ids)
    llm = Llama(model_path=model_gguf, lora_path=None if lora_gguf == "-" else lora_gguf,
                n_ctx=max(64, len(ids)), n_threads=2, logits_all=True, verbose=False, seed=0,
                # An F32 cache, so that keys and values are not rounded to F16.
                type_k=0, type_v=0, flash_attn=False)
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    studio = load_file(studio_file)["logits"]
    top = lambda x: np.argsort(-x, axis=-1)[:, :5]
    print(f"top5={'equal' if (top(ours) == top(studio)).all() else 'differ'}")
    # Quantised files move logits by tenths: the greedy token is compared where the studio's
    # best leads its runner-up by more than half a logit, and near ties are counted.
    runner_up = np.sort(studio, axis=-1)
    decided = runner_up[:, -1] - runner_up[:, -2] > 0.5
    same = ours.argmax(-1) == studio.argmax(-1)
    print(f"top1={'equal' if same[decided].all() else 'differ'}")
    print(f"near_ties={int((~decided).sum())}")
    print(f"max_abs_diff={np.abs(ours - studio).max():.3e}")


def cmd_gguf_read(model_gguf, lora_gguf):
    """Without llama.cpp: the keys and tensor shapes llama.cpp's loader checks."""
    from gguf import GGUFReader
    model = GGUFReader(model_gguf)
    arch = bytes(model.fields["general.architecture"].parts[-1]).decode()
    for key in ["block_count", "embedding_length", "attention.head_count", "context_length"]:
        assert f"{arch}.{key}" in model.fields, key
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"]:
        assert key in model.fields, key
    shapes = {t.name: list(t.shape) for t in model.tensors}
    if lora_gguf != "-":
        lora = GGUFReader(lora_gguf)
        assert bytes(lora.fields["general.type"].parts[-1]).decode() == "adapter"
        for t in lora.tensors:
            base, part = t.name.rsplit(".", 1)
            w = shapes[base]
            if part == "lora_a":
                assert t.shape[0] == w[0], (t.name, t.shape, w)
            else:
                assert t.shape[1] == w[1], (t.name, t.shape, w)
    print("structure=ok")


COMMANDS = {
    "make-tiny": cmd_make_tiny,
    "base": cmd_base,
    "plan-line": cmd_plan_line,
    "peft": cmd_peft, "peft-nf4": cmd_peft_nf4, "peft-t5": cmd_peft_t5, "make-peft-t5": cmd_make_peft_t5, "adapters": cmd_adapters, "make-peft": cmd_make_peft,
    "make-adapters": cmd_make_adapters, "logits": cmd_logits, "merged": cmd_merged,
    "llama-cpp": cmd_llama_cpp, "gguf-read": cmd_gguf_read,
}

def run(args):
    """One subcommand, as from a fresh process (the same seed); returns its exit status."""
    torch.manual_seed(0)
    try:
        COMMANDS[args[0]](*args[1:])
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code)
        return e.code if isinstance(e.code, int) else 1
    except Exception:  # the row fails with the traceback in its log; the next row goes on
        traceback.print_exc(file=sys.stdout)
        return 1


def serve():
    """Subcommands from stdin, one per line, arguments separated by tabs; each answered with
    its output and a line `__done__ <status>`. Saves the harness a Python start (torch,
    transformers: ~10 s) per row."""
    sys.stderr = sys.stdout
    for line in iter(sys.stdin.readline, ""):
        args = [a for a in line.rstrip("\n").split("\t") if a]
        status = run(args) if args else 2
        print(f"\n__done__ {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        sys.exit(run(sys.argv[1:]))
