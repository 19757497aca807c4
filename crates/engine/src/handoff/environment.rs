//! Honest about what runs where: before a job starts, its Python must have every package the
//! bundle needs, at least at the version the entry point is written for; otherwise the run
//! fails at once saying what is missing and how to install it.

use std::process::Stdio;

use serde::Deserialize;

use super::bundle::{requirements, CHECK_SCRIPT};
use super::place::{quote, Place};
use super::target::TargetConfig;
use crate::error::{EngineError, Result};

#[derive(Deserialize)]
struct Report {
    python: String,
    packages: std::collections::BTreeMap<String, Option<String>>,
}

/// Runs the bundle's check script with the target's Python where the job runs, and compares
/// its versions.
pub fn check(target: &TargetConfig, place: &Place) -> Result<()> {
    let needed = requirements(target);
    let fail = |message: String| EngineError::Job {
        target: target.kind.as_str().into(),
        message,
    };
    let names: Vec<&str> = needed.iter().map(|(name, _)| *name).collect();
    let line = format!(
        "{} {CHECK_SCRIPT} {}",
        quote(&target.python),
        names.join(" ")
    );
    let out = place
        .shell(&line, false)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run its Python `{}`: {e}", target.python)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Report = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            fail(format!(
                "its Python `{}` did not report its packages: {}",
                target.python,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
    let problems: Vec<String> = needed
        .iter()
        .filter_map(
            |(name, min)| match report.packages.get(*name).cloned().flatten() {
                None => Some(format!("{name} is not installed")),
                Some(v) if older(&v, min) => Some(format!("{name} is {v}")),
                Some(_) => None,
            },
        )
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let install: Vec<String> = needed
        .iter()
        .map(|(name, min)| format!("'{name}>={min}'"))
        .collect();
    Err(fail(format!(
        "its Python `{}` ({}) cannot train the bundle: {}; install with `{} -m pip install {}`",
        target.python,
        report.python,
        problems.join(", "),
        target.python,
        install.join(" ")
    )))
}

/// Whether version `have` (e.g. `2.15.0+cu132`) is older than `min` (e.g. `2.4`), comparing
/// the leading numbers of each dotted part.
fn older(have: &str, min: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split('.')
            .map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    };
    let (a, b) = (parts(have), parts(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x < y;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::older;

    #[test]
    fn versions_compare_by_their_numbers() {
        assert!(!older("2.15.0+cu132", "2.4"));
        assert!(older("0.9.1", "0.17"));
        assert!(!older("1.0", "1.0.0"));
        assert!(older("4.56.0.dev0", "4.56.1"));
    }
}
