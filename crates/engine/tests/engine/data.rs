//! Dataset readers, record formats, chat templates, loss masks, reports and statistics.

use std::path::{Path, PathBuf};

use peft_studio_engine::chat::{ChatTemplate, Message};
use peft_studio_engine::data::load::read_records;
use peft_studio_engine::data::stats::{mark_trained, token_stats};
use peft_studio_engine::data::{
    load_examples, DataConfig, Encoder, Example, Examples, Format, OnBadRecords, Record, TrainOn,
    Truncation,
};
use peft_studio_engine::fixtures::TinySpec;
use peft_studio_engine::model::gguf::GgufModel;
use peft_studio_engine::tokenizer::TextTokenizer;

use crate::common::{tiny_model, write};

fn records(path: &Path, format: Format) -> Vec<Record> {
    let cfg = DataConfig {
        format,
        ..Default::default()
    };
    let (records, report) = read_records(path, &cfg).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problem_lines());
    records.into_iter().map(|(_, r)| r).collect()
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

fn tiny_tokenizer(dir: &Path) -> TextTokenizer {
    TextTokenizer::load(&tiny_model(dir, &TinySpec::default()), &[]).unwrap()
}

#[test]
fn jsonl_with_bom_crlf_blank_lines_and_unicode() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.jsonl",
        "\u{feff}{\"text\": \"naïve 東京 🤖\"}\r\n\r\n   \n{\"text\": \"two\"}\r\n",
    );
    let got = records(&path, Format::Auto);
    assert_eq!(
        got,
        vec![
            Record::Text("naïve 東京 🤖".into()),
            Record::Text("two".into())
        ]
    );
}

/// Sequence-to-sequence data's usual `input`/`target` fields read as a prompt and its
/// completion, detected or chosen; `input` alone stays an alpaca field.
#[test]
fn input_target_records_read_as_prompt_and_completion() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.jsonl",
        "{\"input\": \"translate: cat\", \"target\": \"chat\"}\n",
    );
    let want = vec![Record::PromptCompletion {
        prompt: "translate: cat".into(),
        completion: "chat".into(),
    }];
    assert_eq!(records(&path, Format::Auto), want);
    assert_eq!(records(&path, Format::PromptCompletion), want);
}

#[test]
fn every_reader_gives_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let want = vec![
        Record::PromptCompletion {
            prompt: "Q: 1+1?\nA:".into(),
            completion: " 2".into(),
        },
        Record::PromptCompletion {
            prompt: "say \"hi\", please".into(),
            completion: " hi".into(),
        },
    ];
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        "{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\"}\n{\"prompt\": \"say \\\"hi\\\", please\", \"completion\": \" hi\"}\n",
    );
    let json = write(
        dir.path(),
        "a.json",
        "[{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\"},\n {\"prompt\": \"say \\\"hi\\\", please\", \"completion\": \" hi\"}]",
    );
    let csv = write(
        dir.path(),
        "a.csv",
        "question,answer\n\"Q: 1+1?\nA:\",\" 2\"\n\"say \"\"hi\"\", please\",\" hi\"\n",
    );
    let tsv = write(dir.path(), "a.tsv", "question\tanswer\nQ: 1+1?\\nA:\t 2\n");
    assert_eq!(records(&jsonl, Format::Auto), want);
    assert_eq!(records(&json, Format::Auto), want);
    let mapped = DataConfig {
        columns: [
            ("question".to_string(), "prompt".to_string()),
            ("answer".to_string(), "completion".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let (from_csv, report) = read_records(&csv, &mapped).unwrap();
    assert_eq!(report.format, Format::PromptCompletion);
    assert_eq!(
        from_csv.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
        want
    );
    let (from_tsv, _) = read_records(&tsv, &mapped).unwrap();
    assert_eq!(from_tsv.len(), 1, "a TSV line is a record");

    let text = write(
        dir.path(),
        "a.txt",
        "first block\nstill first\n\n\nsecond block\n",
    );
    assert_eq!(
        records(&text, Format::Auto),
        vec![
            Record::Text("first block\nstill first".into()),
            Record::Text("second block".into())
        ]
    );
}

#[test]
fn alpaca_sharegpt_and_messages_become_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let alpaca = write(
        dir.path(),
        "alpaca.jsonl",
        "{\"instruction\": \"Translate\", \"input\": \"chat\", \"output\": \"cat\"}\n{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\", \"system\": \"Be nice.\"}\n",
    );
    assert_eq!(
        records(&alpaca, Format::Auto),
        vec![
            Record::Chat(vec![
                msg("user", "Translate\n\nchat"),
                msg("assistant", "cat")
            ]),
            Record::Chat(vec![
                msg("system", "Be nice."),
                msg("user", "Say hi"),
                msg("assistant", "hi")
            ]),
        ]
    );
    let sharegpt = write(
        dir.path(),
        "s.jsonl",
        "{\"conversations\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}, {\"from\": \"human\", \"value\": \"c\"}, {\"from\": \"gpt\", \"value\": \"d\"}]}\n",
    );
    assert_eq!(
        records(&sharegpt, Format::Auto),
        vec![Record::Chat(vec![
            msg("system", "S"),
            msg("user", "a"),
            msg("assistant", "b"),
            msg("user", "c"),
            msg("assistant", "d")
        ])]
    );
    let messages = write(
        dir.path(),
        "m.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n",
    );
    assert_eq!(
        records(&messages, Format::Auto),
        vec![Record::Chat(vec![msg("user", "a"), msg("assistant", "b")])]
    );
}

#[test]
fn problems_name_file_line_and_field_and_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.jsonl",
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\"}\n{\"instruction\": 3, \"output\": \"b\"}\n{broken\n\n{\"instruction\": \"a\", \"output\": \"b\"}\n",
    );
    let (records, report) = read_records(&path, &DataConfig::default()).unwrap();
    assert_eq!(records.len(), 2);
    let lines = report.problem_lines();
    let name = path.display().to_string();
    assert_eq!(
        lines[0],
        format!("{name}:2: alpaca record has no \"output\"")
    );
    assert_eq!(
        lines[1],
        format!("{name}:3: field \"instruction\" is a number, expected a string")
    );
    assert!(
        lines[2].starts_with(&format!("{name}:4: not valid JSON")),
        "{}",
        lines[2]
    );
    assert!(
        report.summary().ends_with(
            "alpaca format, 2 usable, 3 rejected (1 missing field, 1 unreadable, 1 wrong type)"
        ),
        "{}",
        report.summary()
    );

    // Stop (the default) refuses the file and lists the lines; skip trains on the rest.
    let tok = tiny_tokenizer(dir.path());
    let err = load_examples(&path, &tok, &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":2: alpaca record has no \"output\"") && err.contains("on_bad_records"),
        "{err}"
    );
    let skip = DataConfig {
        on_bad_records: OnBadRecords::Skip,
        ..Default::default()
    };
    let (examples, report) = load_examples(&path, &tok, &skip).unwrap();
    assert_eq!((examples.len(), report.problems.len()), (2, 3));
}

#[test]
fn prompt_completion_trains_exactly_the_completion_and_eos() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let record = Record::PromptCompletion {
        prompt: "ab".into(),
        completion: "cd".into(),
    };
    let e = Encoder::new(&tok, TrainOn::Completions)
        .unwrap()
        .encode(&record)
        .unwrap();
    let prompt_len = tok.encode("ab", true).unwrap().len();
    let completion_len = tok.encode("cd", false).unwrap().len();
    assert_eq!(e.ids.len(), prompt_len + completion_len + 1);
    assert_eq!(*e.ids.last().unwrap(), tok.eos_ids()[0]);
    let want: Vec<u8> = std::iter::repeat_n(0, prompt_len)
        .chain(std::iter::repeat_n(1, completion_len + 1))
        .collect();
    assert_eq!(e.loss_mask, want);
    let all = Encoder::new(&tok, TrainOn::All)
        .unwrap()
        .encode(&record)
        .unwrap();
    assert!(all.loss_mask.iter().all(|&m| m == 1));
    let text = Encoder::new(&tok, TrainOn::Completions)
        .unwrap()
        .encode(&Record::Text("xyz".into()))
        .unwrap();
    assert!(text.loss_mask.iter().all(|&m| m == 1));
}

#[test]
fn chat_trains_assistant_turns_with_their_end_of_turn_only() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    // The tiny model's template: `<|role|>content\n` per turn.
    let record = Record::Chat(vec![
        msg("system", "S"),
        msg("user", "u1"),
        msg("assistant", "A1"),
        msg("user", "u2"),
        msg("assistant", "A2"),
    ]);
    let enc = Encoder::new(&tok, TrainOn::Completions).unwrap();
    let rendered = enc.render(&record).unwrap();
    assert_eq!(
        mark_trained(&rendered, "[", "]"),
        "<|system|>S\n<|user|>u1\n<|assistant|>[A1\n]<|user|>u2\n<|assistant|>[A2\n]"
    );
    let e = enc.encode(&record).unwrap();
    let (ids, offsets) = tok.encode_with_offsets(&rendered.text).unwrap();
    assert_eq!(e.ids, ids, "ids are those of the rendered text");
    let trained_text: String = offsets
        .iter()
        .zip(&e.loss_mask)
        .filter(|(_, &m)| m == 1)
        .map(|((s, t), _)| &rendered.text[*s..*t])
        .collect();
    assert_eq!(
        trained_text, "A1\nA2\n",
        "exactly the assistant turns and their newline end"
    );
}

#[test]
fn models_without_a_template_get_chatml() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path(), &TinySpec::default());
    let cfg_path = model.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tok = TextTokenizer::load(&model, &[]).unwrap();
    let enc = Encoder::new(&tok, TrainOn::Completions).unwrap();
    let rendered = enc
        .render(&Record::Chat(vec![
            msg("user", "hi"),
            msg("assistant", "yo"),
        ]))
        .unwrap();
    assert_eq!(
        mark_trained(&rendered, "[", "]"),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n[yo<|im_end|>\n]"
    );
}

#[derive(serde::Deserialize)]
struct Golden {
    smollm2_template: String,
    bos_token: String,
    eos_token: String,
    conversations: Vec<Vec<Message>>,
    cases: Vec<GoldenCase>,
}

#[derive(serde::Deserialize)]
struct GoldenCase {
    template: String,
    conversation: usize,
    add_generation_prompt: bool,
    text: Option<String>,
    ids: Option<Vec<u32>>,
    error: Option<String>,
}

fn golden() -> Golden {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/chat/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden_template(g: &Golden, name: &str) -> ChatTemplate {
    let source = match name {
        "smollm2" => g.smollm2_template.clone(),
        other => {
            let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/fixtures/reference/chat/{other}.jinja"));
            std::fs::read_to_string(p).unwrap()
        }
    };
    ChatTemplate::new(&source, &g.bos_token, &g.eos_token).unwrap()
}

#[test]
fn chat_templates_render_exactly_as_transformers() {
    let g = golden();
    for case in &g.cases {
        let template = golden_template(&g, &case.template);
        let got = template.render(
            &g.conversations[case.conversation],
            case.add_generation_prompt,
        );
        let what = format!(
            "{} conversation {} generation prompt {}",
            case.template, case.conversation, case.add_generation_prompt
        );
        match (&case.text, &case.error) {
            (Some(text), _) => assert_eq!(&got.unwrap(), text, "{what}"),
            (None, Some(error)) => {
                let err = got.unwrap_err().to_string();
                assert!(err.contains(error.as_str()), "{what}: {err}");
            }
            _ => panic!("bad golden case"),
        }
    }
}

/// Token ids need SmolLM2's tokenizer, built from the GGUF that scripts/test.sh fetches.
#[test]
fn chat_template_token_ids_match_transformers_with_smollm2() {
    let Some(gguf) = std::env::var_os("PEFT_STUDIO_SMOLLM2_GGUF") else {
        assert!(std::env::var("PEFT_STUDIO_REQUIRE_REAL_MODEL").as_deref() != Ok("1"));
        eprintln!("skipped: set PEFT_STUDIO_SMOLLM2_GGUF");
        return;
    };
    let model = GgufModel::open(Path::new(&gguf)).unwrap();
    let tok = model.text_tokenizer().unwrap();
    let g = golden();
    for case in g.cases.iter().filter(|c| c.text.is_some()) {
        let text = case.text.as_ref().unwrap();
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(
            &ids,
            case.ids.as_ref().unwrap(),
            "{} conversation {}",
            case.template,
            case.conversation
        );
    }
}

#[test]
fn truncation_keeps_the_chosen_end_and_is_counted() {
    let example = Example {
        ids: (0..10).collect(),
        loss_mask: vec![1; 10],
        source: Vec::new(),
    };
    let right =
        Examples::with_truncation(vec![example.clone()], 3, 1, 0, Truncation::Right).unwrap();
    let left = Examples::with_truncation(vec![example], 3, 1, 0, Truncation::Left).unwrap();
    assert_eq!((right.truncated(), left.truncated()), (1, 1));
    let first = |e: &Examples| {
        e.batch_at(0, &candle_core::Device::Cpu)
            .unwrap()
            .input_ids
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    };
    assert_eq!(first(&right), vec![0, 1, 2]);
    assert_eq!(first(&left), vec![6, 7, 8]);
}

#[test]
fn token_statistics() {
    let ex = |n: usize| Example {
        ids: vec![1; n],
        loss_mask: (0..n).map(|i| u8::from(i % 2 == 0)).collect(),
        source: Vec::new(),
    };
    let s = token_stats(&(1..=20).map(ex).collect::<Vec<_>>(), 15);
    assert_eq!(
        (s.examples, s.min, s.median, s.p95, s.max),
        (20, 1, 10, 19, 20)
    );
    assert_eq!(s.total_tokens, 210);
    assert_eq!(s.over_max_len, 5);
    assert_eq!(
        s.trained_tokens,
        (1..=20).map(|n: usize| n.div_ceil(2)).sum::<usize>()
    );
}

#[test]
fn hostile_files_give_located_errors_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let skip = DataConfig {
        on_bad_records: OnBadRecords::Skip,
        ..Default::default()
    };

    // A 50 MB single line is read like any other.
    let big = format!("{{\"text\": \"{}\"}}\n", "a".repeat(50 << 20));
    let path = write(dir.path(), "big.jsonl", &big);
    let (records, _) = read_records(&path, &skip).unwrap();
    assert_eq!(records.len(), 1);

    // Invalid UTF-8 on line 2.
    let path = dir.path().join("bytes.jsonl");
    std::fs::write(&path, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n").unwrap();
    let (_, report) = load_examples(&path, &tok, &skip).unwrap();
    assert_eq!(
        report.problem_lines(),
        vec![format!("{}:2: not valid UTF-8 (byte 11)", path.display())]
    );

    // Broken CSV quoting and a short row.
    let path = write(
        dir.path(),
        "bad.csv",
        "text,label\nfine,1\nshort\n\"open quote,2\n",
    );
    let (records, report) = read_records(&path, &skip).unwrap();
    assert_eq!(records.len(), 1);
    assert!(
        report.problem_lines()[0]
            .contains("bad.csv:3: broken CSV: 1 fields where the header has 2"),
        "{:?}",
        report.problem_lines()
    );

    // Wrong types, an empty file, a JSON array with a non-object, bad JSON array.
    for (name, text, want) in [
        (
            "types.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": 1}]}\n",
            ":1: messages[0] has no string \"content\"",
        ),
        (
            "roles.jsonl",
            "{\"conversations\": [{\"from\": \"alien\", \"value\": \"x\"}]}\n",
            ":1: conversations[0].from is \"alien\", not a known role",
        ),
        (
            "arr.json",
            "[{\"text\": \"a\"}, 7]",
            ":2: element 2 is a number, expected an object",
        ),
    ] {
        let path = write(dir.path(), name, text);
        let (_, report) = read_records(&path, &skip).unwrap();
        let lines = report.problem_lines();
        assert!(lines.iter().any(|l| l.contains(want)), "{name}: {lines:?}");
    }
    let empty = write(dir.path(), "empty.jsonl", "");
    assert!(read_records(&empty, &skip)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let broken = write(
        dir.path(),
        "broken.json",
        "[{\"text\": \"a\"},\n {\"text\": ",
    );
    let err = read_records(&broken, &skip).unwrap_err().to_string();
    assert!(
        err.contains("broken.json:2: not a valid JSON array"),
        "{err}"
    );
}

#[test]
fn parquet_files_written_by_pyarrow_read_with_nested_turns() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/data");
    assert_eq!(
        records(&data.join("chat.parquet"), Format::Auto),
        vec![
            Record::Chat(vec![
                msg("user", "Capital of Peru?"),
                msg("assistant", "Lima.")
            ]),
            Record::Chat(vec![msg("user", "naïve 🤖"), msg("assistant", "ok")]),
        ]
    );
    assert_eq!(
        records(&data.join("pc.zstd.parquet"), Format::Auto),
        vec![
            Record::PromptCompletion {
                prompt: "1+1=".into(),
                completion: " 2".into()
            },
            Record::PromptCompletion {
                prompt: "2+2=".into(),
                completion: " 4".into()
            },
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = write(dir.path(), "fake.parquet", "PAR1 not really");
    let err = read_records(&fake, &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fake.parquet") && err.contains("not a readable Parquet file"),
        "{err}"
    );
}

#[test]
fn tokenization_is_cached_by_content_tokenizer_and_settings() {
    use peft_studio_engine::data::{load_examples_cached, TokenCache};
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    // Enough records to be split across threads; order must survive.
    let lines: Vec<String> = (0..2000)
        .map(|i| format!("{{\"prompt\": \"q{i} \", \"completion\": \"a{i}\"}}"))
        .collect();
    let path = write(dir.path(), "big.jsonl", &lines.join("\n"));
    let cache = TokenCache::new(dir.path().join("cache"));
    let cfg = DataConfig::default();
    let (fresh, report) = load_examples_cached(&path, &tok, &cfg, Some(&cache)).unwrap();
    let (plain, _) = load_examples(&path, &tok, &cfg).unwrap();
    assert_eq!(fresh, plain, "parallel tokenization keeps record order");
    assert_eq!(
        fresh[1999].ids[..tok.encode("q1999 ", true).unwrap().len()],
        tok.encode("q1999 ", true).unwrap()[..]
    );
    let key = TokenCache::key(&path, &tok, &cfg).unwrap();
    let (cached, cached_report) = cache.get(&key).expect("written on first load");
    assert_eq!((cached, cached_report), (fresh.clone(), report));

    // Other settings or other content: another key.
    let all = DataConfig {
        train_on: TrainOn::All,
        ..Default::default()
    };
    assert_ne!(TokenCache::key(&path, &tok, &all).unwrap(), key);
    let other = write(dir.path(), "other.jsonl", "{\"text\": \"x\"}");
    assert_ne!(TokenCache::key(&other, &tok, &cfg).unwrap(), key);

    // A damaged entry is a miss, not an error.
    let entry = dir.path().join("cache").join(format!("{key}.tokens"));
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    assert!(cache.get(&key).is_none());
    let (again, _) = load_examples_cached(&path, &tok, &cfg, Some(&cache)).unwrap();
    assert_eq!(again, fresh);
}

#[test]
fn packing_fills_rows_in_order_and_keeps_masks() {
    let ex = |n: u32, trained: u8| Example {
        ids: vec![n; n as usize],
        loss_mask: vec![trained; n as usize],
        source: Vec::new(),
    };
    let prompt_then_answer = Example {
        ids: vec![4; 4],
        loss_mask: vec![0, 0, 1, 1],
        source: Vec::new(),
    };
    let examples = Examples::new(
        vec![ex(3, 1), prompt_then_answer, ex(2, 1), ex(6, 1), ex(2, 1)],
        8,
        1,
        0,
    )
    .unwrap();
    let packed = examples.packed(8);
    let rows: Vec<&Example> = packed.iter().collect();
    assert_eq!(rows.len(), 2, "rows of at most 9 tokens: [3,4,2] and [6,2]");
    assert_eq!(rows[0].ids, [vec![3; 3], vec![4; 4], vec![2; 2]].concat());
    assert_eq!(
        rows[0].loss_mask,
        [vec![1; 3], vec![0, 0, 1, 1], vec![1; 2]].concat()
    );
    assert_eq!(rows[1].ids, [vec![6; 6], vec![2; 2]].concat());
}

/// A Parquet file whose metadata makes the parquet crate panic (found by fuzzing the dataset
/// reader): an error naming the file, not a crash.
#[test]
fn parquet_that_panics_its_reader_is_an_error() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hostile/thrift-panic.parquet");
    let Err(err) = peft_studio_engine::data::read::read_rows(&path, &Default::default()) else {
        panic!("a malformed Parquet file was read");
    };
    let err = err.to_string();
    assert!(
        err.contains("thrift-panic.parquet") && err.contains("Parquet"),
        "{err}"
    );
}

/// A Gemma GGUF without a template of its own gets Gemma's turns, rendered as Google's
/// Gemma 3 template renders text: the system message before the first user turn, the
/// assistant as `model`, contents trimmed.
#[test]
fn gemma_s_template_renders_gemma_turns() {
    use peft_studio_engine::chat::{ChatTemplate, Message, GEMMA};
    let m = |role: &str, content: &str| Message {
        role: role.into(),
        content: content.into(),
    };
    let t = ChatTemplate::new(GEMMA, "<bos>", "<eos>").unwrap();
    let conversation = [
        m("system", "Be brief."),
        m("user", " Capital of France? "),
        m("assistant", "Paris."),
    ];
    assert_eq!(
        t.render(&conversation, false).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
    );
    assert_eq!(
        t.render(&conversation[..2], true).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    );
    let err = t
        .render(&[m("user", "a"), m("user", "b")], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("alternate"), "{err}");
}
