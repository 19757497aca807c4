//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use peft_studio_app::plan::Quantization;
use peft_studio_app::runs::Precision;

use crate::flags::{MethodFlags, TrainFlags};

/// Parameter-efficient fine-tuning of Llama-family models, headless.
#[derive(Debug, Parser)]
#[command(name = "peft-studio-cli", version, about)]
pub struct Cli {
    /// The run catalog (default: PEFT_STUDIO_CATALOG, else catalog.sqlite in the studio's
    /// data folder).
    #[arg(long, global = true)]
    pub catalog: Option<PathBuf>,
    /// The compute device: auto (the first GPU, else the CPU), cpu, cuda, cuda:N, metal,
    /// metal:N (default: PEFT_STUDIO_DEVICE, else auto). A named device that is not there
    /// stops the command with the reason.
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print trainable and total parameter counts (PEFT's line) and the predicted peak memory
    /// from config.json alone.
    Plan(PlanArgs),
    /// List the training methods with their hyperparameters, defaults and ranges.
    Methods(MethodsArgs),
    /// Train a run from a config file and/or flags.
    Train(Box<TrainArgs>),
    /// Continue a stopped run from its newest checkpoint.
    Resume(ResumeArgs),
    /// The run catalog: list, show, tag, note, cancel, delete, watch.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Compare runs: final figures, the config fields that differ, and a loss chart.
    Compare(CompareArgs),
    /// Export a run's adapter or a checkpoint.
    Export(ExportArgs),
    /// Generate text with a base model, optionally with an adapter.
    Generate(GenerateArgs),
    /// Serve the base model and adapters over an OpenAI-compatible API (chat, completions,
    /// streaming; each request picks the base or an adapter by `model`).
    Serve(ServeArgs),
    /// Evaluate a base model and adapters on a file: perplexity, generation metrics against
    /// references, or multiple-choice accuracy (recorded in the catalog against the runs).
    Eval(EvalArgs),
    /// Write the logits of token ids (base model, or with an adapter) to a safetensors file,
    /// for comparing with other tools.
    Logits(LogitsArgs),
    /// Measure training throughput and peak memory for one config.
    Bench(BenchArgs),
    /// Write a demo model, dataset and run config to try the studio with.
    Demo(DemoArgs),
    /// Adapters: import a shared one (PEFT or adapters-library folder, GGUF LoRA), list them.
    #[command(subcommand)]
    Adapters(AdaptersCommand),
    /// The model library: list, import a folder or GGUF file, download from the hub, remove.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Datasets: check every record, preview what will be trained.
    #[command(subcommand)]
    Data(DataCommand),
}

impl Command {
    /// Whether the command loads a model on the compute device, so that a device that is
    /// not there stops it before any work (`plan` only names one: it plans for a GPU this
    /// machine need not have).
    pub fn computes(&self) -> bool {
        matches!(
            self,
            Self::Train(_)
                | Self::Resume(_)
                | Self::Export(_)
                | Self::Generate(_)
                | Self::Logits(_)
                | Self::Bench(_)
                | Self::Eval(_)
        )
    }
}

/// How a dataset file is read (shared by `data check` and `data preview`).
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// The dataset: .jsonl, .json, .csv, .tsv or .txt.
    pub file: PathBuf,
    /// auto, text, prompt-completion, alpaca, messages or sharegpt.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Field renames, e.g. `question=prompt,answer=completion`.
    #[arg(long)]
    pub columns: Option<String>,
    /// Train every token, not only completions and assistant turns.
    #[arg(long)]
    pub train_on_all: bool,
}

/// `data …`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Download a dataset's data files (Parquet, JSONL, CSV, TSV) from the Hugging Face hub
    /// into the hub cache and print their paths.
    Download {
        /// Dataset repository id, e.g. org/name.
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
    },
    /// Report every unusable record as FILE:LINE: message, then a summary; exits 1 if any.
    Check {
        /// The dataset and how to read it.
        #[command(flatten)]
        data: DataArgs,
        /// Also render chat records with this model's template (folder or library name).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Print records as the model will see them, trained text marked, and token statistics.
    Preview {
        /// The dataset and how to read it.
        #[command(flatten)]
        data: DataArgs,
        /// The model whose tokenizer and chat template apply (folder or library name).
        #[arg(long)]
        model: PathBuf,
        /// How many records to print.
        #[arg(long, default_value_t = 3)]
        n: usize,
        /// Length limit the statistics count over-long examples against.
        #[arg(long, default_value_t = 2048)]
        seq_len: usize,
    },
}

/// `models …`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List installed models.
    List {
        /// One JSON object per model instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a Hugging Face model folder or a GGUF file, both used in place: a GGUF base
    /// trains with its weights kept in the types it stores (Q4_K, Q8_0, …).
    Import {
        /// The folder or the .gguf file.
        path: PathBuf,
        /// Library name (default: the file or folder name).
        #[arg(long)]
        name: Option<String>,
        /// Dequantise a GGUF file into an f32 safetensors folder instead (4–8× its size;
        /// what transformers loads without a GGUF reader).
        #[arg(long)]
        convert: bool,
    },
    /// Download a model from the Hugging Face hub (HF_HOME, HF_ENDPOINT, HF_TOKEN apply).
    Download {
        /// Repository id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Library name (default: the repository name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a model as one GGUF file for llama.cpp, Ollama and LM Studio.
    ToGguf {
        /// Model folder or library name.
        model: PathBuf,
        /// The .gguf file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Weight type: f32, f16, or a block format (q8_0, q4_k, q6_k, q5_k, q4_0, …).
        #[arg(long = "type", default_value = "f16")]
        ty: String,
    },
    /// Write a GGUF model with random weights in the shape of a config.json (for measuring
    /// memory and speed at sizes no one wants to download, e.g. an 8B model).
    Random {
        /// The config.json giving the shape.
        #[arg(long)]
        config: PathBuf,
        /// A model folder whose tokenizer the file carries (padded to the config's vocabulary).
        #[arg(long)]
        tokenizer: PathBuf,
        /// The .gguf file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Weight type: f32, f16, or a block format (q4_k, q8_0, …).
        #[arg(long = "type", default_value = "q4_k")]
        ty: String,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Remove a model from the library (files the studio converted are deleted too).
    Remove {
        /// Library name.
        name: String,
    },
}

/// `adapters …`.
#[derive(Debug, Subcommand)]
pub enum AdaptersCommand {
    /// List the adapters in the catalog.
    List,
    /// Load an adapter folder into a running `serve` under a name (requests then pick it
    /// with `model: NAME`).
    Load {
        /// The name requests will use.
        name: String,
        /// The PEFT adapter folder (a path on the server's machine).
        path: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Unload an adapter from a running `serve`.
    Unload {
        /// Its name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check a shared adapter and add it to the catalog: a PEFT or adapters-library folder, or
    /// a llama.cpp GGUF LoRA file (converted to a PEFT folder; needs --model).
    Import {
        /// The folder or the .gguf file.
        path: PathBuf,
        /// The base model it is for (folder or library name): the adapter is attached to it
        /// first, and refused if it does not fit.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to write `dataset.jsonl` and `run.toml` (and the made-up `model/`) into.
    #[arg(long)]
    pub out: PathBuf,
    /// Train this model (folder or library name) instead of a small one made in code.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A model folder or its config.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Method settings.
    #[command(flatten)]
    pub method: MethodFlags,
    /// Examples per batch, for the memory estimate.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Tokens per example, for the memory estimate.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// With gradient checkpointing (layers recompute their activations in the backward pass).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// f32, or bf16 mixed precision (GPUs, CPUs with AVX-512-BF16).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// The projections held quantized (q4_k, q8_0, …); a GGUF base counts the types it
    /// stores.
    #[arg(long)]
    pub quantize: Option<Quantization>,
}

/// `methods`.
#[derive(Debug, Args)]
pub struct MethodsArgs {
    /// Print the full descriptions as JSON (what the app's method picker reads).
    #[arg(long)]
    pub json: bool,
}

/// How training progress is shown.
#[derive(Debug, Args, Default, Clone)]
pub struct OutputArgs {
    /// Print events as JSON lines instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A run config (TOML); flags override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Dataset (JSONL).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Run folder (default: runs/<time>-<method> in the studio's data folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A name for the run in the catalog (default: method and model).
    #[arg(long)]
    pub name: Option<String>,
    /// Start the worker and return at once, printing the run id (follow with `runs watch`).
    #[arg(long)]
    pub detach: bool,
    /// Method settings.
    #[command(flatten)]
    pub method: MethodFlags,
    /// Training settings.
    #[command(flatten)]
    pub train: TrainFlags,
    /// Dataset record format (auto, text, prompt-completion, alpaca, messages, sharegpt).
    #[arg(long)]
    pub format: Option<String>,
    /// A separate validation file.
    #[arg(long)]
    pub val_dataset: Option<PathBuf>,
    /// Train on the remaining records when some cannot be used (they are still listed).
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Measure the trained adapter at the end (`[eval]`): perplexity, generation or choice;
    /// the result is kept against the run and shown by `compare`.
    #[arg(long)]
    pub eval_task: Option<String>,
    /// The held-out file `--eval-task` reads.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Where the run trains (`[target]`): local (this machine's engine, the default),
    /// accelerate (a job for transformers + PEFT under accelerate here), or ssh:HOST (the same
    /// job on another machine); docs/HANDOFF.md.
    #[arg(long)]
    pub target: Option<String>,
    /// Processes of a hand-off job (one per GPU).
    #[arg(long)]
    pub processes: Option<usize>,
    /// What a hand-off job's processes compute on: gpu or cpu.
    #[arg(long)]
    pub job_device: Option<String>,
    /// How a hand-off job's processes share the model: ddp, fsdp, zero2 or zero3.
    #[arg(long)]
    pub strategy: Option<String>,
    /// The Python that runs a hand-off job (torch, transformers, peft and accelerate).
    #[arg(long)]
    pub python: Option<String>,
    /// `ssh:HOST`: more arguments for ssh, in one string (`-p 2222 -i KEY`, `-F CONFIG`).
    #[arg(long, allow_hyphen_values = true)]
    pub ssh_options: Option<String>,
    /// `ssh:HOST`: the folder there for the job's bundles (default: ~/peft-studio-jobs).
    #[arg(long)]
    pub remote_dir: Option<String>,
    /// `ssh:HOST`: the base model's folder there (default: the model is sent with the bundle).
    #[arg(long)]
    pub remote_model: Option<String>,
    /// Write the hand-off job's bundle into <out>/job and say how to start it, without
    /// recording or starting a run (to take it to a machine the studio does not reach).
    #[arg(long)]
    pub bundle_only: bool,
    /// Output style.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run: its catalog id or its folder.
    pub run: String,
    /// Train to this many steps in all (to continue a finished run further).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Start the worker and return at once (follow with `runs watch`).
    #[arg(long)]
    pub detach: bool,
    /// Output style.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first (dead workers are noticed and their runs marked failed).
    List {
        /// One JSON object per run instead of a table.
        #[arg(long)]
        json: bool,
        /// Only runs with this status (queued, running, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only runs with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// One run: status, progress, error, checkpoints, adapters, notes.
    Show {
        /// Run id or folder.
        run: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add tags to a run.
    Tag {
        /// Run id or folder.
        run: String,
        /// Tags to add.
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a run.
    Untag {
        /// Run id or folder.
        run: String,
        /// Tags to remove.
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Add a note to a run.
    Note {
        /// Run id or folder.
        run: String,
        /// The text.
        text: String,
    },
    /// Stop a run after its current step (it writes a checkpoint first).
    Cancel {
        /// Run id or folder.
        run: String,
    },
    /// Delete a stopped run from the catalog, and its folder unless --keep-files.
    Delete {
        /// Run id or folder.
        run: String,
        /// Keep the run folder (checkpoints, adapter) on disk.
        #[arg(long)]
        keep_files: bool,
    },
    /// Follow a run live from the catalog (history first), until it stops.
    Watch {
        /// Run id or folder.
        run: String,
        /// Print metric rows as JSON lines instead of a progress bar.
        #[arg(long)]
        json: bool,
    },
}

/// `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run ids or folders.
    #[arg(required = true)]
    pub runs: Vec<String>,
    /// Write a loss chart here (.png or .svg).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// X axis: step, epoch, tokens or time.
    #[arg(long, default_value = "step")]
    pub x: String,
    /// EMA smoothing weight in [0, 1) (TensorBoard's slider).
    #[arg(long, default_value_t = 0.0)]
    pub smoothing: f64,
    /// Logarithmic loss axis.
    #[arg(long)]
    pub log_y: bool,
    /// Most points per series.
    #[arg(long, default_value_t = 2000)]
    pub points: usize,
    /// Chart size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1600x900")]
    pub size: String,
    /// Print the series and the config diff as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run: its catalog id or its folder.
    #[arg(
        long,
        conflicts_with = "checkpoint",
        required_unless_present = "checkpoint"
    )]
    pub run: Option<String>,
    /// A checkpoint folder (`<run>/checkpoints/step-N`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Export format: peft (the adapter, as PEFT loads it), merged (the base model with the
    /// adapter folded in, as a Hugging Face folder), gguf-lora (a LoRA as llama.cpp and
    /// Ollama load it) or gguf-f32 / gguf-f16 / gguf-q8_0 (the merged model as one GGUF file);
    /// for the GGUF formats --out names the .gguf file.
    #[arg(long, default_value = "peft")]
    pub format: String,
    /// Destination folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// `logits`.
#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// Base model folder or installed model name.
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter folder (any method the studio loads).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Comma-separated token ids.
    #[arg(long)]
    pub ids: String,
    /// Output safetensors file (one tensor `logits`, [tokens, vocab], f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Hold the base's projections quantized, as a run with `quantize` trained on it.
    #[arg(long)]
    pub quantize: Option<Quantization>,
}

/// `generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Base model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub chat: bool,
    /// Hold the base's projections quantized (q4_k, nf4, …): a quarter of the memory.
    #[arg(long)]
    pub quantize: Option<Quantization>,
    /// The number format the model is held in: f32, or bf16 (half the bytes read per new
    /// token, so faster decoding, at bf16's rounding: the greedy text may differ).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Also print, on stderr, the prompt's and the new tokens, the time to the first new
    /// token, the decoding speed after it and the peak memory (`key=value`, for
    /// bench/generate).
    #[arg(long)]
    pub timing: bool,
}

/// `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The base model (folder or library name); default: the model of the first --run.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// An adapter folder to measure (repeat for several).
    #[arg(long = "adapter")]
    pub adapters: Vec<PathBuf>,
    /// A run whose final adapter to measure, by id (repeat for several); results are kept
    /// against the run and appear in `compare`.
    #[arg(long = "run")]
    pub runs: Vec<i64>,
    /// Leave out the base model alone (measured first otherwise).
    #[arg(long)]
    pub no_base: bool,
    /// perplexity, generation or choice.
    #[arg(long, default_value = "perplexity")]
    pub task: String,
    /// The file: a dataset (perplexity, generation) or `{"context", "choices", "gold"}` lines
    /// (choice).
    #[arg(long)]
    pub data: PathBuf,
    /// How the dataset's records are read (auto, text, prompt-completion, alpaca, messages,
    /// sharegpt).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// New tokens per answer (generation).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// The number format the model is held in.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Print one JSON object per target instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write every item's figures (JSON lines with the target's label) to this file.
    #[arg(long)]
    pub items_out: Option<PathBuf>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The base model: an installed model's name or a folder.
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter to serve, as NAME=DIR (repeat for several); requests pick it with
    /// `model: NAME`.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// The address to listen on: loopback unless you name another (then set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every request (default: PEFT_STUDIO_API_KEY).
    #[arg(long, env = "PEFT_STUDIO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The number format the base is held in: f32, or bf16 (half the bytes per token).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Hold the base's projections quantized (q4_k, nf4, …).
    #[arg(long)]
    pub quantize: Option<Quantization>,
    /// Requests decoded together at most.
    #[arg(long, default_value_t = peft_studio_app::serve::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Requests waiting or being answered at most; more get 503 at once.
    #[arg(long, default_value_t = peft_studio_app::serve::DEFAULT_MAX_WAITING)]
    pub max_waiting: usize,
}

/// Which running server `adapters load` and `adapters unload` ask.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// Its API key, if it has one (default: PEFT_STUDIO_API_KEY).
    #[arg(long, env = "PEFT_STUDIO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Method settings.
    #[command(flatten)]
    pub method: MethodFlags,
    /// Examples per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// With gradient checkpointing.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// f32, or bf16 mixed precision.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Keep the base's projections quantized (q4_k, q8_0, …).
    #[arg(long)]
    pub quantize: Option<Quantization>,
}
