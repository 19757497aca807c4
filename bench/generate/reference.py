"""One single-stream greedy decode by a reference engine, printed as the studio's
`generate --timing` prints it: `prompt_tokens new_tokens ttft_s decode_tokens_per_s
peak_rss_mb` (key=value). Not a test: a measurement for bench/generate/run.

    python reference.py transformers MODEL_DIR PROMPT MAX_NEW_TOKENS THREADS
    python reference.py llama-cpp GGUF_FILE PROMPT MAX_NEW_TOKENS THREADS

Both stop at the model's end-of-sequence token as the studio does; the time to the first
token covers the prompt's forward pass, the decoding speed the tokens after it.
"""
import resource
import sys
import time


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def transformers_run(model_dir, prompt, max_new, threads):
    import torch
    import transformers as tf
    torch.set_num_threads(threads)
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    stamps = []

    class Clock(tf.generation.streamers.BaseStreamer):
        """Notes when each new token arrives (the first `put` is the prompt)."""
        def put(self, value):
            stamps.append(time.perf_counter())

        def end(self):
            pass

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, streamer=Clock())
    end = time.perf_counter()
    new = out.shape[1] - ids.shape[1]
    first = stamps[1] if len(stamps) > 1 else end
    return ids.shape[1], new, first - start, (new - 1) / max(end - first, 1e-9)


def llama_cpp_run(gguf, prompt, max_new, threads):
    from llama_cpp import Llama
    llm = Llama(model_path=gguf, n_threads=threads, n_ctx=2048, verbose=False)
    prompt_tokens = len(llm.tokenize(prompt.encode()))
    start = time.perf_counter()
    first, new = None, 0
    for chunk in llm.create_completion(prompt, max_tokens=max_new, temperature=0.0, stream=True):
        # The last chunk only says why it stopped.
        if chunk["choices"][0]["finish_reason"] is None:
            first = first or time.perf_counter()
            new += 1
    end = time.perf_counter()
    first = first or end
    return prompt_tokens, new, first - start, (new - 1) / max(end - first, 1e-9)


def main():
    engine, model, prompt, max_new, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    run = {"transformers": transformers_run, "llama-cpp": llama_cpp_run}[engine]
    prompt_tokens, new, ttft, speed = run(model, prompt, max_new, threads)
    print(f"prompt_tokens={prompt_tokens} new_tokens={new} ttft_s={ttft:.4f} "
          f"decode_tokens_per_s={speed:.2f} peak_rss_mb={peak_rss_mb():.1f}")


if __name__ == "__main__":
    main()
