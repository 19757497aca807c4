//! Which compute device the process uses: `PEFT_STUDIO_DEVICE` (`auto`, `cpu`, `cuda`,
//! `cuda:N`, `metal`, `metal:N`; the CLI's `--device` sets it for itself and its workers).
//!
//! `auto` takes the first CUDA or Metal GPU the build and the machine have, else the CPU.
//! A device asked for by name is opened or refused with the reason (a build without that
//! feature, no such GPU, a driver error): never a silent fall back to the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{EngineError, Result};

/// The environment variable that names the device.
pub const DEVICE_VAR: &str = "PEFT_STUDIO_DEVICE";
/// `on` lets f32 products on a CUDA GPU use TF32 tensor cores (about 10 bits of mantissa in
/// the products, f32 sums: what PyTorch's `allow_tf32` does); off by default.
pub const TF32_VAR: &str = "PEFT_STUDIO_TF32";

/// A device as a person names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first GPU there is, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The Metal GPU with this ordinal.
    Metal(usize),
}

impl FromStr for DeviceRequest {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            EngineError::Device(format!(
                "`{s}` is not a device: use auto, cpu, cuda, cuda:N, metal or metal:N"
            ))
        };
        let (kind, ordinal) = match s.trim().split_once(':') {
            Some((kind, n)) => (kind, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        match (kind.to_ascii_lowercase().as_str(), ordinal) {
            ("" | "auto", None) => Ok(Self::Auto),
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda" | "gpu", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceRequest {
    /// The request in `PEFT_STUDIO_DEVICE` (unset: `auto`).
    pub fn from_env() -> Result<Self> {
        match std::env::var(DEVICE_VAR) {
            Ok(v) => v.parse(),
            Err(_) => Ok(Self::Auto),
        }
    }

    /// Opens the device, or says why it cannot be had.
    pub fn open(self) -> Result<Device> {
        let refused = |why: String| EngineError::Device(format!("{self} was asked for but {why}"));
        match self {
            Self::Auto => Ok(first_gpu().unwrap_or(Device::Cpu)),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n).map_err(refused),
            Self::Metal(n) => open_metal(n).map_err(refused),
        }
    }
}

/// The first GPU this build can use, if the machine has one.
fn first_gpu() -> Option<Device> {
    open_cuda(0).or_else(|_| open_metal(0)).ok()
}

/// One stream for the whole process: candle's `new_cuda` gives every thread its own stream,
/// while training steps run on whichever pool thread takes them and checkpoints are copied
/// out from another, and a synchronisation waits on the calling thread's stream only.
fn open_cuda(ordinal: usize) -> std::result::Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("this build has no CUDA support (build with `--features cuda`)".into());
    }
    candle_core::cuda::set_gemm_reduced_precision_f32(
        std::env::var(TF32_VAR).is_ok_and(|v| v == "on"),
    );
    Device::new_cuda_with_stream(ordinal)
        .map_err(|e| format!("CUDA GPU {ordinal} cannot be opened: {e}"))
}

fn open_metal(ordinal: usize) -> std::result::Result<Device, String> {
    if !cfg!(feature = "metal") {
        return Err("this build has no Metal support (build with `--features metal`)".into());
    }
    Device::new_metal(ordinal).map_err(|e| format!("Metal GPU {ordinal} cannot be opened: {e}"))
}

/// The device of this process, opened once: opening a GPU creates a context, and the
/// planner asks on every form change. The error, when the requested device cannot be had,
/// is kept as text for every later caller.
fn opened() -> &'static std::result::Result<Device, String> {
    static DEVICE: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    DEVICE.get_or_init(|| {
        DeviceRequest::from_env()
            .and_then(DeviceRequest::open)
            .map_err(|e| match e {
                EngineError::Device(why) => why,
                other => other.to_string(),
            })
    })
}

/// The device of this process. Where the requested one cannot be had this is the CPU: front
/// ends call [`check_device`] before any work, so that this never happens unseen.
pub fn default_device() -> Device {
    opened().clone().unwrap_or(Device::Cpu)
}

/// The requested device, or the reason it cannot be had: `--device cuda` on a machine
/// without one stops here, before a model is loaded.
pub fn check_device() -> Result<Device> {
    opened().clone().map_err(EngineError::Device)
}

/// A short name of a device for logs and benchmarks: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, request) in [
            ("auto", DeviceRequest::Auto),
            ("", DeviceRequest::Auto),
            ("CPU", DeviceRequest::Cpu),
            ("cuda", DeviceRequest::Cuda(0)),
            ("cuda:1", DeviceRequest::Cuda(1)),
            ("metal:0", DeviceRequest::Metal(0)),
        ] {
            assert_eq!(text.parse::<DeviceRequest>().ok(), Some(request), "{text}");
            assert_eq!(
                request.to_string().parse::<DeviceRequest>().ok(),
                Some(request)
            );
        }
        for bad in ["tpu", "cuda:x", "cpu:1", "cuda:"] {
            let err = bad.parse::<DeviceRequest>().err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("is not a device")), "{bad}");
        }
        // This test build has neither CUDA nor Metal: asking for one says so.
        if !cfg!(feature = "cuda") {
            let err = DeviceRequest::Cuda(0).open().err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("no CUDA support")));
        }
        assert!(DeviceRequest::Cpu.open().is_ok_and(|d| d.is_cpu()));
    }
}
