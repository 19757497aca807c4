//! The adapter layers the model runs beside its own weights: LoRA (with rsLoRA and DoRA) and
//! IA³ on linear layers, bottleneck adapters between sublayers. The model and its fused
//! kernels compute with them; which layers get one, with what settings, is a method's
//! choice (`peft`).

pub mod bottleneck;
pub mod ia3;
pub mod lora;
