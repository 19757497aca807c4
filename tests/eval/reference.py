"""The references `eval` is checked against (tests/eval/run drives it):

  perplexity MODEL ITEMS [ADAPTER]  each item of `peft-studio-cli eval --items-out` (its ids
      and scored positions) scored by transformers (+ PEFT) in float32: per-item
      log-likelihoods and the perplexity, compared with the studio's (<= 1e-4 relative).
  choice MODEL TASK_JSONL ITEMS OUT [ADAPTER]  lm-evaluation-harness on the same items
      (a task of `{"context", "choices", "gold"}` lines, log-likelihood multiple choice),
      its per-choice log-likelihoods and accuracy compared with the studio's.
Prints one `ok:` line per check and a summary; exits 1 on the first failure.
"""

import glob
import json
import math
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM


def fail(what):
    print(f"FAIL: {what}", flush=True)
    sys.exit(1)


def studio_items(path, label):
    with open(path) as f:
        return [json.loads(l)["item"] for l in f if json.loads(l)["label"] == label]


def load(model_dir, adapter):
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def perplexity(model_dir, items_path, adapter=None):
    label = os.path.basename(adapter) if adapter else "base"
    items = studio_items(items_path, label)
    model = load(model_dir, adapter)
    worst, nll, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        for it in items:
            ids = torch.tensor([it["ids"]])
            logp = torch.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)[0]
            picked = logp.gather(1, ids[0, 1:, None])[:, 0]
            mask = torch.tensor(it["scored"][1:], dtype=torch.bool)
            ll = picked[mask].double().sum().item()
            worst = max(worst, abs(ll - it["loglikelihood"]) / max(1.0, abs(ll)))
            nll -= ll
            tokens += int(mask.sum())
    studio_nll = -sum(it["loglikelihood"] for it in items)
    rel = abs(math.exp(nll / tokens) - math.exp(studio_nll / tokens)) / math.exp(nll / tokens)
    print(f"perplexity {label}: items={len(items)} tokens={tokens} torch={math.exp(nll / tokens):.6f} "
          f"studio={math.exp(studio_nll / tokens):.6f} rel={rel:.2e} worst_item_rel={worst:.2e}")
    if rel > 1e-4 or worst > 1e-4:
        fail(f"perplexity {label} differs from PyTorch by {rel:.2e} (worst item {worst:.2e})")
    print(f"ok: perplexity {label} equals PyTorch's within 1e-4")


def choice(model_dir, task_jsonl, items_path, out, adapter=None):
    label = os.path.basename(adapter) if adapter else "base"
    task_dir = os.path.join(out, "task")
    os.makedirs(task_dir, exist_ok=True)
    with open(os.path.join(task_dir, "studio_mc.yaml"), "w") as f:
        f.write(f"""task: studio_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.abspath(task_jsonl)}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    args = f"pretrained={model_dir},dtype=float32" + (f",peft={adapter}" if adapter else "")
    results = os.path.join(out, f"results-{label}")
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", args,
                           "--tasks", "studio_mc", "--include_path", task_dir, "--device", "cpu",
                           "--batch_size", "1", "--output_path", results, "--log_samples"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:])
        fail("lm-evaluation-harness failed")
    samples = sorted(glob.glob(f"{results}/**/samples_studio_mc_*.jsonl", recursive=True))
    if not samples:
        fail("lm-evaluation-harness wrote no samples")
    with open(samples[-1]) as f:
        theirs = sorted((json.loads(l) for l in f), key=lambda s: s["doc_id"])
    ours = studio_items(items_path, label)
    if len(theirs) != len(ours):
        fail(f"{len(theirs)} items in lm-evaluation-harness, {len(ours)} in the studio")
    worst, acc = 0.0, [0, 0]
    for t, o in zip(theirs, ours):
        lls = [float(r[0][0]) for r in t["resps"]]
        for a, b in zip(lls, o["loglikelihoods"]):
            worst = max(worst, abs(a - b) / max(1.0, abs(a)))
        acc[0] += int(t["acc"])
        acc[1] += int(o["pick"] == o["gold"])
    print(f"choice {label}: items={len(ours)} acc lm-eval={acc[0] / len(ours):.4f} "
          f"studio={acc[1] / len(ours):.4f} worst_ll_rel={worst:.2e}")
    if worst > 1e-4 or acc[0] != acc[1]:
        fail(f"choice {label}: log-likelihoods differ by {worst:.2e} or accuracy differs")
    print(f"ok: choice {label} equals lm-evaluation-harness (accuracy, log-likelihoods within 1e-4)")


if __name__ == "__main__":
    {"perplexity": perplexity, "choice": choice}[sys.argv[1]](*sys.argv[2:])
