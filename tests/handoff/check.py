"""Compares runs' per-step losses, as the catalog recorded them (`runs watch --json`), with a
reference run's: every step present, each loss and validation loss within 1e-3 relative.

    python check.py [--steps N] REFERENCE.jsonl LABEL=RUN.jsonl...
"""
import json
import sys

TOLERANCE = 1e-3


def rows(path):
    """step -> (loss, eval loss) from a metrics file (lines that are not JSON skipped)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            loss, eval_loss = out.get(row["step"], (None, None))
            out[row["step"]] = (row["loss"] if row["loss"] is not None else loss,
                                row["eval_loss"] if row["eval_loss"] is not None else eval_loss)
    return out


def main(args):
    steps = 10
    if args[0] == "--steps":
        steps, args = int(args[1]), args[2:]
    reference = rows(args[0])
    failed = False
    for spec in args[1:]:
        label, path = spec.split("=", 1)
        run = rows(path)
        worst, worst_eval = 0.0, 0.0
        for step in range(1, steps + 1):
            if step not in run or run[step][0] is None:
                print(f"{label}: step {step} is missing")
                failed = True
                continue
            (a, ea), (b, eb) = run[step], reference[step]
            worst = max(worst, abs(a - b) / abs(b))
            if ea is not None and eb is not None:
                worst_eval = max(worst_eval, abs(ea - eb) / abs(eb))
        ok = worst <= TOLERANCE and worst_eval <= TOLERANCE
        failed |= not ok
        print(f"{label}: {steps} steps, largest relative loss difference {worst:.2e}, "
              f"validation {worst_eval:.2e} (tolerance {TOLERANCE:g}) {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
