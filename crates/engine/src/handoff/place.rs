//! Where a job's commands run: in the bundle's folder here, or in a copy of it on a machine
//! reached over ssh (sent as a tar stream, with the model unless the machine has it; the
//! trained adapter brought back the same way). Everything the studio asks of a job — check its
//! Python, launch it, stop it, find its checkpoints — is a shell line run in that folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::bundle::{LAUNCH_SCRIPT, STOP_FILE, SUBMIT_SCRIPT};
use super::target::{TargetConfig, TargetKind};
use crate::error::{EngineError, Result};

/// The folder the job's bundle is in, and the machine it is on.
pub enum Place<'a> {
    /// This machine's folder: the run's own bundle, launched here or, for a Slurm target,
    /// submitted from here to a cluster whose nodes see the folder.
    Here {
        /// The bundle.
        bundle: PathBuf,
        /// Whether the job is submitted to Slurm.
        slurm: bool,
    },
    /// Another machine, over ssh.
    Ssh {
        /// The target (host, options, folders).
        target: &'a TargetConfig,
        /// `user@host` or an ssh config alias.
        host: &'a str,
        /// The bundle's copy there (relative paths are in the remote home).
        remote: String,
        /// The bundle here.
        local: PathBuf,
    },
}

/// `text` quoted for a POSIX shell.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

impl<'a> Place<'a> {
    /// The place of `target`'s job for the bundle at `bundle` (of the run folder it is in).
    pub fn of(target: &'a TargetConfig, bundle: &Path) -> Self {
        match (target.kind, target.host.as_deref()) {
            (TargetKind::Ssh, Some(host)) => {
                let run = bundle
                    .parent()
                    .and_then(Path::file_name)
                    .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
                let root = target.remote_dir.as_deref().unwrap_or("peft-studio-jobs");
                Place::Ssh {
                    target,
                    host,
                    remote: format!("{}/{run}", root.trim_end_matches('/')),
                    local: bundle.to_path_buf(),
                }
            }
            (kind, _) => Place::Here {
                bundle: bundle.to_path_buf(),
                slurm: kind == TargetKind::Slurm,
            },
        }
    }

    /// A command running shell `line` in the bundle's folder; `tty` gives a remote line a
    /// terminal, so that the job there ends when the connection does.
    pub fn shell(&self, line: &str, tty: bool) -> Command {
        match self {
            Place::Here { bundle, .. } => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", line]).current_dir(bundle);
                cmd
            }
            Place::Ssh {
                target,
                host,
                remote,
                ..
            } => {
                let mut cmd = ssh(target, host, tty);
                cmd.arg(format!("cd {} && {line}", quote(remote)));
                cmd
            }
        }
    }

    /// Where the job finds the base model: its path in the bundle's settings here; over ssh,
    /// `remote_model`, or the copy sent into the bundle.
    pub fn model_override(&self) -> Option<String> {
        match self {
            Place::Here { .. } => None,
            Place::Ssh { target, .. } => Some(
                target
                    .remote_model
                    .as_ref()
                    .map_or_else(|| "\"$PWD/model\"".into(), |m| quote(m)),
            ),
        }
    }

    /// The target, host, remote folder and local bundle of a place over ssh.
    fn over_ssh(&self) -> Option<(&TargetConfig, &str, &str, &Path)> {
        match self {
            Place::Here { .. } => None,
            Place::Ssh {
                target,
                host,
                remote,
                local,
            } => Some((target, host, remote, local)),
        }
    }

    /// Copies the bundle (and the model, unless the machine has it) to the place.
    pub fn send(&self, model: &Path) -> Result<()> {
        let Some((target, host, remote, local)) = self.over_ssh() else {
            return Ok(());
        };
        let mut parts = vec![(local, remote.to_string())];
        if target.remote_model.is_none() {
            parts.push((model, format!("{remote}/model")));
        }
        for (from, to) in parts {
            // -h: a model folder of links (the studio's library) is sent as the files.
            let mut tar = Command::new("tar");
            tar.args(["-C"])
                .arg(from)
                .args(["-chf", "-", "--exclude=./out", "--exclude=./job.log", "."])
                .stdout(Stdio::piped());
            let line = format!("mkdir -p {0} && tar -C {0} -xf -", quote(&to));
            pipe(tar, ssh_line(target, host, &line), host)?;
        }
        Ok(())
    }

    /// Brings the job's `out/adapter` into the bundle here.
    pub fn fetch_adapter(&self) -> Result<()> {
        let Some((target, host, remote, local)) = self.over_ssh() else {
            return Ok(());
        };
        let out = local.join("out");
        std::fs::create_dir_all(&out).map_err(|e| EngineError::io(&out, e))?;
        let line = format!("tar -C {} -cf - adapter", quote(&format!("{remote}/out")));
        let mut untar = Command::new("tar");
        untar.arg("-C").arg(&out).args(["-xf", "-"]);
        let mut ssh = ssh_line(target, host, &line);
        ssh.stdout(Stdio::piped());
        pipe(ssh, untar, host)
    }

    /// Asks the job to stop after its current step.
    pub fn ask_stop(&self) -> Result<()> {
        match self {
            Place::Here { bundle, .. } => {
                let stop = bundle.join(STOP_FILE);
                std::fs::write(&stop, b"").map_err(|e| EngineError::io(&stop, e))
            }
            Place::Ssh { host, .. } => {
                let status = self
                    .shell(&format!("touch {STOP_FILE}"), false)
                    .stdin(Stdio::null())
                    .status()
                    .map_err(|e| ssh_error(host, &e.to_string()))?;
                match status.success() {
                    true => Ok(()),
                    false => Err(ssh_error(host, "could not ask the job to stop")),
                }
            }
        }
    }

    /// The step of the job's newest complete checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Option<usize> {
        let listing = match self {
            Place::Here { bundle, .. } => std::fs::read_dir(bundle.join("out").join("checkpoints"))
                .ok()?
                .flatten()
                .filter(|d| d.path().join("studio_state.json").exists())
                .filter_map(|d| d.file_name().to_str().map(str::to_string))
                .collect::<Vec<_>>(),
            Place::Ssh { .. } => {
                let out = self
                    .shell("cd out/checkpoints && ls -d */studio_state.json", false)
                    .stdin(Stdio::null())
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split('/').next().map(str::to_string))
                    .collect()
            }
        };
        listing
            .iter()
            .filter_map(|name| name.strip_prefix("step-")?.parse().ok())
            .max()
    }

    /// The script that starts the job and prints its output until it ends: the launch script,
    /// or for Slurm the one that submits the batch script and follows it.
    pub fn start_script(&self) -> &'static str {
        match self {
            Place::Here { slurm: true, .. } => SUBMIT_SCRIPT,
            _ => LAUNCH_SCRIPT,
        }
    }

    /// The bundle on this machine (its log, its adapter once fetched).
    pub fn local_bundle(&self) -> &Path {
        match self {
            Place::Here { bundle, .. } => bundle,
            Place::Ssh { local, .. } => local,
        }
    }

    /// How the job's connection is named in a failure: the host over ssh.
    pub fn host(&self) -> Option<&str> {
        match self {
            Place::Here { .. } => None,
            Place::Ssh { host, .. } => Some(host),
        }
    }
}

/// `ssh` to `host` with the target's options; no password prompts (a job runs unattended).
fn ssh(target: &TargetConfig, host: &str, tty: bool) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes"]);
    if tty {
        cmd.arg("-tt");
    }
    cmd.args(&target.ssh_options).arg(host);
    cmd
}

fn ssh_line(target: &TargetConfig, host: &str, line: &str) -> Command {
    let mut cmd = ssh(target, host, false);
    cmd.arg(line);
    cmd
}

fn ssh_error(host: &str, message: &str) -> EngineError {
    EngineError::Job {
        target: format!("ssh {host}"),
        message: message.into(),
    }
}

/// Runs `from | to`, both of which must succeed.
fn pipe(mut from: Command, mut to: Command, host: &str) -> Result<()> {
    let mut producer = from
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ssh_error(host, &e.to_string()))?;
    let input = producer
        .stdout
        .take()
        .ok_or_else(|| ssh_error(host, "no pipe between the copies"))?;
    let consumer = to
        .stdin(input)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| ssh_error(host, &e.to_string()))?;
    let produced = producer
        .wait_with_output()
        .map_err(|e| ssh_error(host, &e.to_string()))?;
    for out in [&produced, &consumer] {
        if !out.status.success() {
            return Err(ssh_error(
                host,
                &format!(
                    "copying the job's files failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }
}
