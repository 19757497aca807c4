//! The device runs train on: `auto` (the first GPU of this build, else the CPU), `cpu`,
//! `cuda:N` or `metal:N`, chosen with `PEFT_STUDIO_DEVICE` (the CLI's `--device` sets it for
//! itself and the workers it starts), and checked before any work so that a named device that
//! is not there stops the command with the reason.

pub use peft_studio_engine::device::{check_device, DeviceRequest, DEVICE_VAR};
