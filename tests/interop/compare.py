"""Loads a studio export in Hugging Face PEFT and compares its logits with the studio's.

    python compare.py BASE_DIR ADAPTER_DIR STUDIO_LOGITS.safetensors IDS
prints `max_abs_diff=<x>`.
"""
import sys

import torch
import transformers as tf
from peft import PeftConfig, PeftModel
from safetensors.numpy import load_file


def main():
    base_dir, adapter_dir, studio_file, ids = sys.argv[1:5]
    ids = [int(i) for i in ids.split(",")]
    base = tf.AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    cfg = PeftConfig.from_pretrained(adapter_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    # Prompt tuning's outputs include its virtual tokens; the studio's cover the real ones.
    if cfg.peft_type == "PROMPT_TUNING":
        logits = logits[cfg.num_virtual_tokens:]
    studio = torch.from_numpy(load_file(studio_file)["logits"])
    print(f"max_abs_diff={(logits - studio).abs().max().item():.3e}")


if __name__ == "__main__":
    main()
