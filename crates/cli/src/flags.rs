//! Flags made from the app's setting descriptions, one per setting (`--lr`, `--warmup-ratio`,
//! `--r`, `--target-modules`, …), so that a setting described once reaches the command line
//! without a line here. What the user gives becomes an override table laid over the run
//! config (`app::runs::with_overrides`); what is not given keeps the config's value.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use peft_studio_app::describe::{methods, train_settings, ParamInfo, ParamRange};
use peft_studio_app::runs::{parse_layers, TargetModules};
use serde_json::Value as Json;
use toml::{Table, Value};

/// The flag of a setting, its value checked as it is read.
fn flag(p: &ParamInfo, help: &str) -> Arg {
    let default = match &p.default {
        Json::Null | Json::Bool(false) => String::new(),
        Json::String(s) => format!(" [default: {s}]"),
        Json::Array(a) if a.is_empty() => String::new(),
        v => format!(" [default: {v}]"),
    };
    let arg = Arg::new(p.field)
        .long(p.field.replace('_', "-"))
        .value_name(p.field.to_uppercase())
        .help(format!("{}{default}", help.trim_end_matches('.')));
    match &p.range {
        ParamRange::Bool => arg.action(ArgAction::SetTrue),
        ParamRange::Int { .. } => arg.value_parser(clap::value_parser!(i64).range(0..)),
        ParamRange::Float { .. } => arg.value_parser(clap::value_parser!(f64)),
        ParamRange::Choice { options } => {
            let options = options.clone();
            // Matched without regard to case, stored as the description spells it.
            let canonical = options.clone();
            arg.ignore_case(true)
                .value_parser(
                    PossibleValuesParser::new(options).map(move |given: String| {
                        canonical
                            .iter()
                            .find(|o| o.eq_ignore_ascii_case(&given))
                            .map_or(given, |o| o.to_string())
                    }),
                )
        }
        ParamRange::Modules { .. } => {
            let list = p.default.is_array();
            arg.value_parser(move |text: &str| modules_value(text, list))
        }
        ParamRange::Layers => arg.value_parser(|text: &str| {
            let layers = parse_layers(text).map_err(|e| e.to_string())?;
            Value::try_from(layers).map_err(|e| e.to_string())
        }),
        ParamRange::Text => arg,
    }
}

/// Module names as PEFT takes them: a list, `all-linear`, or a regex; a field that holds a
/// list of names (its default is one) takes a lone pattern as a list of one.
fn modules_value(text: &str, list: bool) -> Result<Value, String> {
    let value = Value::try_from(TargetModules::parse_cli(text)).map_err(|e| e.to_string())?;
    Ok(match value {
        Value::String(s) if list => Value::Array(vec![Value::String(s)]),
        v => v,
    })
}

/// The given values of `settings`' flags, by field.
fn given(settings: &[ParamInfo], m: &ArgMatches) -> Table {
    let mut out = Table::new();
    for p in settings {
        let value = match &p.range {
            ParamRange::Bool => m.get_flag(p.field).then_some(Value::Boolean(true)),
            ParamRange::Int { .. } => m.get_one::<i64>(p.field).map(|&v| v.into()),
            ParamRange::Float { .. } => m.get_one::<f64>(p.field).map(|&v| v.into()),
            ParamRange::Modules { .. } | ParamRange::Layers => m.get_one::<Value>(p.field).cloned(),
            ParamRange::Choice { .. } | ParamRange::Text => {
                m.get_one::<String>(p.field).map(|v| v.clone().into())
            }
        };
        if let Some(v) = value {
            out.insert(p.field.to_string(), v);
        }
    }
    out
}

/// The `[train]` settings as flags.
#[derive(Debug, Clone, Default)]
pub struct TrainFlags(pub Table);

impl FromArgMatches for TrainFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(given(&train_settings(), m)))
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0.extend(given(&train_settings(), m));
        Ok(())
    }
}

impl Args for TrainFlags {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.next_help_heading("Training");
        train_settings()
            .iter()
            .fold(cmd, |cmd, p| cmd.arg(flag(p, p.help)))
            .next_help_heading(None::<&str>)
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Every method setting once (several methods share some), with the methods it applies to.
fn method_settings() -> Vec<(ParamInfo, Vec<&'static str>)> {
    let mut out: Vec<(ParamInfo, Vec<&'static str>)> = Vec::new();
    for m in methods() {
        for p in m.params {
            match out.iter_mut().find(|(q, _)| q.field == p.field) {
                Some((_, kinds)) => kinds.push(m.kind.as_str()),
                None => out.push((p, vec![m.kind.as_str()])),
            }
        }
    }
    out
}

/// The `[method]` table as flags: `--method` and every method's settings.
#[derive(Debug, Clone, Default)]
pub struct MethodFlags(pub Table);

impl MethodFlags {
    fn read(m: &ArgMatches) -> Table {
        let settings: Vec<ParamInfo> = method_settings().into_iter().map(|(p, _)| p).collect();
        let mut out = given(&settings, m);
        if let Some(kind) = m.get_one::<String>("method") {
            out.insert("kind".into(), kind.clone().into());
        }
        out
    }
}

impl FromArgMatches for MethodFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(Self::read(m)))
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.0.extend(Self::read(m));
        Ok(())
    }
}

impl Args for MethodFlags {
    fn augment_args(cmd: Command) -> Command {
        let kinds: Vec<&'static str> = methods().iter().map(|m| m.kind.as_str()).collect();
        let cmd = cmd.next_help_heading("Method").arg(
            Arg::new("method")
                .long("method")
                .value_name("METHOD")
                .help("The training method [default: lora]")
                .value_parser(PossibleValuesParser::new(kinds)),
        );
        method_settings()
            .iter()
            .fold(cmd, |cmd, (p, kinds)| {
                let help = format!("{} ({})", p.help.trim_end_matches('.'), kinds.join(", "));
                cmd.arg(flag(p, &help))
            })
            .next_help_heading(None::<&str>)
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
