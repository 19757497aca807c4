//! llama.cpp's GGUF format as the studio writes it: whole models (`model`, with the
//! tokenizer's metadata in `vocab`), LoRA adapters (`lora`), and a shared LoRA read back into
//! a PEFT folder (`lora_read`). Reading a GGUF base model to train on is the model's own
//! loading (`model::gguf`).

pub mod lora;
pub mod lora_read;
pub mod model;
pub mod vocab;
pub mod write;
