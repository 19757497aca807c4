"""A PEFT Studio run handed to Hugging Face accelerate: transformers + PEFT train the bundle's
tokens from its initial adapter with the studio's loop, and print the studio's event lines.

    BUNDLE/launch.sh [--resume]     (accelerate launch … train.py BUNDLE)

The studio wrote everything this reads (see the studio's docs/HANDOFF.md): `job.json` (settings,
the learning rate of every step), `data/train.jsonl` (token ids and loss masks, rendered with
the model's chat template), `data/order.jsonl` (the examples of every micro-batch, in the
studio's seeded order), `data/val.jsonl`, and `initial_adapter/` (PEFT format, the studio's
initialisation). It writes `out/` (events.jsonl, checkpoints/step-N, adapter/) and stops
between steps when the file `STOP` appears.

The loop is the studio's: a step is `grad_accum` micro-batches, split evenly between the
processes; each micro-batch's loss is the mean cross-entropy over its scored targets; the
gradient is the mean over the step's micro-batches, clipped by its global norm, and AdamW
(torch's) takes it at the step's learning rate.
"""
import json
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F


class Processes:
    """This process's place among the job's, from the launcher's environment (torchrun's
    WORLD_SIZE and RANK): accelerate under DeepSpeed on CPUs counts one process where there
    are several."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0

    def sum(self, tensor):
        """`tensor` summed over the processes."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Job:
    """The bundle's files, and where the job writes."""

    def __init__(self, bundle):
        self.bundle = bundle = os.path.abspath(bundle)
        with open(os.path.join(bundle, "job.json"), encoding="utf-8") as f:
            self.spec = json.load(f)
        self.train = self.spec["train"]
        self.examples = read_jsonl(os.path.join(bundle, "data", "train.jsonl"))
        self.order = read_jsonl(os.path.join(bundle, "data", "order.jsonl"))
        val = os.path.join(bundle, "data", "val.jsonl")
        self.val = read_jsonl(val) if os.path.exists(val) else []
        self.out = os.path.join(bundle, "out")
        self.stop_file = os.path.join(bundle, "STOP")


def make_batch(rows, device):
    """Right-padded inputs, next-token targets and their weights, as the studio's batches."""
    seq = max(len(r["ids"]) - 1 for r in rows)
    ids = torch.zeros(len(rows), seq, dtype=torch.long)
    targets = torch.zeros(len(rows), seq, dtype=torch.long)
    weights = torch.zeros(len(rows), seq, dtype=torch.float32)
    tokens = 0
    for i, r in enumerate(rows):
        n = len(r["ids"]) - 1
        tokens += n
        ids[i, :n] = torch.tensor(r["ids"][:-1])
        targets[i, :n] = torch.tensor(r["ids"][1:])
        weights[i, :n] = torch.tensor(r["mask"][1:], dtype=torch.float32)
    return ids.to(device), targets.to(device), weights.to(device), tokens


def batch_loss(model, batch):
    """The mean cross-entropy over the batch's scored targets, and their count."""
    ids, targets, weights, _ = batch
    logits = model(input_ids=ids).logits
    # Prompt tuning puts its virtual tokens' logits first; the sequence's are the last ones.
    logits = logits[:, -ids.shape[1]:, :].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    w = weights.reshape(-1)
    count = w.sum()
    return (ce * w).sum() / count.clamp(min=1.0), count


class Events:
    """The studio's event lines: printed (the studio follows the launcher's output) and kept in
    out/events.jsonl, by the main process only."""

    def __init__(self, procs, out):
        self.main = procs.main
        self.file = open(os.path.join(out, "events.jsonl"), "a", encoding="utf-8") if procs.main else None

    def __call__(self, event, **fields):
        if not self.main:
            return
        line = json.dumps({"event": event, **fields})
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def evaluate(acc, procs, model, job):
    """The mean validation loss over scored targets. Every process runs the same number of
    forward passes (sharded models need all of them), the surplus with weight 0."""
    if not job.val:
        return None
    size = job.train["batch_size"]
    chunks = [job.val[i:i + size] for i in range(0, len(job.val), size)]
    per_rank = -(-len(chunks) // procs.world)
    total = torch.zeros(2, device=acc.device)
    model.eval()
    with torch.no_grad():
        for k in range(per_rank):
            i = k * procs.world + procs.rank
            rows, keep = (chunks[i], 1.0) if i < len(chunks) else (chunks[0], 0.0)
            loss, count = batch_loss(model, make_batch(rows, acc.device))
            total += keep * torch.stack([loss.detach() * count, count])
    model.train()
    total = procs.sum(total)
    return (total[0] / total[1].clamp(min=1.0)).item()


def should_stop(acc, procs, job):
    """Whether the studio asked the job to stop, agreed by all processes."""
    flag = torch.tensor([1.0 if procs.main and os.path.exists(job.stop_file) else 0.0], device=acc.device)
    return procs.sum(flag).item() > 0


def sharded(acc):
    """Whether DeepSpeed or FSDP hold the model and optimiser in shards (only accelerate's own
    state files can save and restore them)."""
    from accelerate.utils import DistributedType
    return acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def save_checkpoint(acc, procs, model, opt, job, state, emit):
    """The adapter and the optimiser state under out/checkpoints/step-N — their own weights,
    not the frozen base's; accelerate's save_state where DeepSpeed or FSDP shard them — and
    the counters last (a checkpoint without them is incomplete); the newest
    `keep_checkpoints` are kept."""
    from peft import get_peft_model_state_dict
    root = os.path.join(job.out, "checkpoints")
    path = os.path.join(root, f"step-{state['step']:08d}")
    if sharded(acc):
        acc.save_state(path)
    elif procs.main:
        os.makedirs(path, exist_ok=True)
        torch.save(get_peft_model_state_dict(acc.unwrap_model(model)), os.path.join(path, "adapter.pt"))
        torch.save(opt.state_dict(), os.path.join(path, "optimizer.pt"))
    procs.barrier()
    if procs.main:
        with open(os.path.join(path, "studio_state.json"), "w", encoding="utf-8") as f:
            json.dump(state, f)
        keep = job.train["keep_checkpoints"]
        done = sorted(d for d in os.listdir(root) if d.startswith("step-"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    procs.barrier()
    emit("checkpoint", step=state["step"], path=path)


def load_checkpoint(acc, model, opt, path):
    """Restores what save_checkpoint saved; returns its counters."""
    from peft import set_peft_model_state_dict
    adapter = os.path.join(path, "adapter.pt")
    if os.path.exists(adapter):
        set_peft_model_state_dict(acc.unwrap_model(model), torch.load(adapter, map_location="cpu"))
        opt.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu"))
    else:
        acc.load_state(path)
    with open(os.path.join(path, "studio_state.json"), encoding="utf-8") as f:
        return json.load(f)


def latest_checkpoint(job):
    root = os.path.join(job.out, "checkpoints")
    done = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "studio_state.json"))) if os.path.isdir(root) else []
    return os.path.join(root, done[-1]) if done else None


def main():
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    import transformers as tf
    from peft import PeftModel

    job = Job(sys.argv[1])
    resume = "--resume" in sys.argv[2:]
    t = job.train
    procs = Processes()
    if t["grad_accum"] % procs.world:
        raise SystemExit(f"grad_accum {t['grad_accum']} does not split between {procs.world} processes")
    local = t["grad_accum"] // procs.world
    # Plain CPU processes are asked for; under DeepSpeed or FSDP accelerate's own choice stands
    # (asking for the CPU would turn them into plain data parallelism).
    cpu = job.spec["device"] == "cpu" and job.spec["strategy"] == "ddp"
    acc = Accelerator(cpu=cpu, gradient_accumulation_steps=local)
    if acc.state.deepspeed_plugin is not None:
        # No dataloader goes through prepare() for DeepSpeed to read the batch size from.
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = t["batch_size"]
        ds["train_batch_size"] = t["batch_size"] * local * procs.world
    print(f"job: {acc.distributed_type} with {procs.world} processes on {acc.device}", file=sys.stderr, flush=True)
    if procs.world > 1 and acc.distributed_type == DistributedType.NO:
        raise SystemExit(f"accelerate did not join the {procs.world} processes on {acc.device} "
                         f"(strategy {job.spec['strategy']}): each would train alone")
    set_seed(t["seed"])
    os.makedirs(job.out, exist_ok=True)
    emit = Events(procs, job.out)

    dtype = torch.bfloat16 if job.spec["precision"] == "bf16" else torch.float32
    # Where the bundle is taken to another machine, the model's folder there.
    model_dir = os.environ.get("PEFT_STUDIO_MODEL") or job.spec["model"]
    base = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if t["gradient_checkpointing"]:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = PeftModel.from_pretrained(base, os.path.join(job.bundle, "initial_adapter"), is_trainable=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"], weight_decay=t["weight_decay"])
    model, opt = acc.prepare(model, opt)

    total = job.spec["total_steps"]
    state = {"step": 0, "tokens_seen": 0, "seed": t["seed"], "last_loss": None}
    if resume and (ckpt := latest_checkpoint(job)):
        state = load_checkpoint(acc, model, opt, ckpt)
    emit("started", total_steps=total, start_step=state["step"], trainable_params=trainable,
         train_examples=len(job.examples), val_examples=len(job.val),
         dropped_examples=job.spec["dropped_examples"], truncated_examples=job.spec["truncated_examples"])
    started = time.perf_counter()
    every = lambda n: n > 0 and state["step"] % n == 0 and state["step"] < total
    if state["step"] == 0 and t["eval_every"] > 0:
        loss = evaluate(acc, procs, model, job)
        if loss is not None:
            emit("eval", step=0, eval_loss=loss)
    cancelled = False
    per_epoch = job.spec["batches_per_epoch"]
    while state["step"] < total:
        if should_stop(acc, procs, job):
            cancelled = True
            break
        step_start = time.perf_counter()
        first = state["step"] * t["grad_accum"] + procs.rank * local
        sums = torch.zeros(2, device=acc.device)  # loss sum, real tokens
        # Set before the backward passes: under DeepSpeed the last one also steps.
        for group in opt.param_groups:
            group["lr"] = job.spec["lr"][state["step"]]
        for index in range(first, first + local):
            rows = [job.examples[i] for i in job.order[index]]
            batch = make_batch(rows, acc.device)
            with acc.accumulate(model):
                loss, _ = batch_loss(model, batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    norm = acc.clip_grad_norm_(model.parameters(), t["max_grad_norm"] if t["max_grad_norm"] > 0 else float("inf"))
                    if norm is None and acc.deepspeed_engine_wrapped is not None:
                        norm = acc.deepspeed_engine_wrapped.engine.get_global_grad_norm()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            sums += torch.tensor([loss.item(), float(batch[3])], device=acc.device)
        sums = procs.sum(sums)
        state["step"] += 1
        state["tokens_seen"] += int(sums[1].item())
        state["last_loss"] = sums[0].item() / t["grad_accum"]
        elapsed = time.perf_counter() - step_start
        emit("step", step=state["step"], total_steps=total,
             epoch=(state["step"] * t["grad_accum"] - 1) // per_epoch,
             tokens_seen=state["tokens_seen"], loss=state["last_loss"], lr=job.spec["lr"][state["step"] - 1],
             grad_norm=float(norm) if norm is not None else 0.0,
             tokens_per_s=sums[1].item() / max(elapsed, 1e-9), elapsed_s=time.perf_counter() - started)
        if every(t["eval_every"]):
            loss = evaluate(acc, procs, model, job)
            if loss is not None:
                emit("eval", step=state["step"], eval_loss=loss)
        if every(t["checkpoint_every"]):
            save_checkpoint(acc, procs, model, opt, job, state, emit)
    if not cancelled:
        loss = evaluate(acc, procs, model, job)
        if loss is not None:
            emit("eval", step=state["step"], eval_loss=loss)
    save_checkpoint(acc, procs, model, opt, job, state, emit)
    if not cancelled:
        adapter = os.path.join(job.out, "adapter")
        state_dict = acc.get_state_dict(model)
        if procs.main:
            acc.unwrap_model(model).save_pretrained(adapter, state_dict=state_dict, safe_serialization=True)
    procs.barrier()
    emit("finished", steps=state["step"], final_loss=state["last_loss"], cancelled=cancelled)
    acc.end_training()


if __name__ == "__main__":
    main()
