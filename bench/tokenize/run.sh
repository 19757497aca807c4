#!/usr/bin/env bash
# Tokenising 100k chat records: the studio (`data check --model`, every core) beside Python
# `datasets.map` with the same fast tokenizer and chat template (num_proc = cores).
# Prints records/s and tokens/s per side and their ratio. Not a test: a measurement.
#   bash bench/tokenize/run.sh [--records N] [--model NAME_OR_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
records=100000
model=SmolLM2-135M-Instruct
while (($#)); do
  case "$1" in
    --records) records="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cache="${PEFT_STUDIO_CACHE:-$HOME/.cache/peft-studio}"
venv="$cache/bench-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet transformers datasets jinja2
fi
cargo build --release --locked -p peft-studio-cli >&2
cli=./target/release/peft-studio-cli
installed=$($cli models list --json)  # captured first: grep -q would cut the pipe
if ! grep -q "\"name\":\"$model\"" <<<"$installed"; then
  $cli models import "$(bash scripts/fetch-smollm2.sh)" --name "$model" >&2
fi
dir=$($cli models list --json | "$venv/bin/python" -c "
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m['name'] == sys.argv[1]: print(m['path'])" "$model")
data="$cache/bench-chat-$records.jsonl"
"$venv/bin/python" - "$data" "$records" <<'PY'
import json, random, sys
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
words = "the studio trains adapters on your own machine quickly and exports them for every tool".split()
with open(path, "w") as f:
    for i in range(n):
        say = lambda k: " ".join(rng.choice(words) for _ in range(k))
        turns = [{"role": "system", "content": "You are helpful."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            turns += [{"role": "user", "content": say(rng.randint(5, 30)) + "?"},
                      {"role": "assistant", "content": say(rng.randint(10, 60)) + "."}]
        f.write(json.dumps({"messages": turns}) + "\n")
PY
echo "studio:" >&2
studio=$($cli data check "$data" --model "$model" | tail -1)
echo "$studio"
echo "python datasets.map:" >&2
python_line=$("$venv/bin/python" - "$data" "$dir" <<'PY'
import os, sys, time
from datasets import load_dataset
from transformers import AutoTokenizer
data, model = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model)
start = time.time()
ds = load_dataset("json", data_files=data, split="train")
def encode(batch):
    return {"input_ids": [tok.apply_chat_template(m, tokenize=True, return_dict=False) for m in batch["messages"]]}
ds = ds.map(encode, batched=True, num_proc=os.cpu_count(), remove_columns=["messages"], load_from_cache_file=False)
tokens = sum(len(x) for x in ds["input_ids"])
secs = time.time() - start
print(f"tokenized {len(ds)} records, {tokens} tokens in {secs:.2f} s: {len(ds)/secs:.0f} records/s, {tokens/secs:.0f} tokens/s")
PY
)
echo "$python_line"
rate() { sed -E 's/.*: ([0-9]+) records\/s, ([0-9]+) tokens\/s/\2/' <<<"$1"; }
awk -v s="$(rate "$studio")" -v p="$(rate "$python_line")" 'BEGIN { printf "studio/python tokens_per_s=%.2f\n", s / p }'
