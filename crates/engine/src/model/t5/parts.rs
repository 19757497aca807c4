//! A T5's weights by their transformers names (`shared.weight`,
//! `encoder.block.0.layer.0.SelfAttention.q.weight`, …), for a merged export: norms and
//! tables as they are, projections with their adapters to fold in.

use candle_core::Tensor;

use super::{Block, Stack, T5Model};
use crate::error::{EngineError, Result};
use crate::model::base_weight::BaseWeight;
use crate::model::linear::Linear;
use crate::model::llama::BasePart;

impl Stack {
    fn parts<'a>(&'a self, name: &str, out: &mut Vec<(String, BasePart<'a>)>) {
        for (i, block) in self.blocks.iter().enumerate() {
            let p = format!("{name}.block.{i}.layer");
            block.parts(&p, out);
            if i == 0 {
                out.push((
                    format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    BasePart::Tensor(&self.relative_bias),
                ));
            }
        }
        out.push((
            format!("{name}.final_layer_norm.weight"),
            BasePart::Tensor(&self.final_norm),
        ));
    }
}

impl Stack {
    fn weights_mut<'a>(&'a mut self, name: &str, out: &mut Vec<(String, &'a mut Tensor)>) {
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let p = format!("{name}.block.{i}.layer");
            let Block {
                self_norm,
                self_attn,
                cross,
                ff_norm,
                ff,
            } = block;
            out.push((format!("{p}.0.layer_norm.weight"), self_norm));
            let mut linears = self_attn.linears_mut();
            let ff_at = match cross {
                Some((norm, attn)) => {
                    out.push((format!("{p}.1.layer_norm.weight"), norm));
                    linears.extend(attn.linears_mut());
                    2
                }
                None => 1,
            };
            out.push((format!("{p}.{ff_at}.layer_norm.weight"), ff_norm));
            linears.extend(ff.linears_mut());
            for lin in linears {
                dense_weight(lin, out);
            }
        }
        out.push((
            format!("{name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            &mut self.relative_bias,
        ));
        out.push((
            format!("{name}.final_layer_norm.weight"),
            &mut self.final_norm,
        ));
    }
}

/// A projection's weight by its checkpoint name, where it is held dense.
fn dense_weight<'a>(lin: &'a mut Linear, out: &mut Vec<(String, &'a mut Tensor)>) {
    if let BaseWeight::Dense(w) = &mut lin.weight {
        out.push((format!("{}.weight", lin.name), w));
    }
}

impl Block {
    fn parts<'a>(&'a self, p: &str, out: &mut Vec<(String, BasePart<'a>)>) {
        out.push((
            format!("{p}.0.layer_norm.weight"),
            BasePart::Tensor(&self.self_norm),
        ));
        let ff_at = match &self.cross {
            Some((norm, _)) => {
                out.push((format!("{p}.1.layer_norm.weight"), BasePart::Tensor(norm)));
                2
            }
            None => 1,
        };
        out.push((
            format!("{p}.{ff_at}.layer_norm.weight"),
            BasePart::Tensor(&self.ff_norm),
        ));
        let a = &self.self_attn;
        let mut linears = vec![&a.q, &a.k, &a.v, &a.o];
        if let Some((_, a)) = &self.cross {
            linears.extend([&a.q, &a.k, &a.v, &a.o]);
        }
        linears.extend(self.ff.linears());
        for lin in linears {
            out.push((format!("{}.weight", lin.name), BasePart::Linear(lin)));
        }
    }
}

impl T5Model {
    /// Every weight a checkpoint holds, by name, projections with their adapters.
    pub fn base_parts(&self) -> Vec<(String, BasePart<'_>)> {
        let mut out = vec![("shared.weight".to_string(), BasePart::Tensor(&self.shared))];
        self.encoder.parts("encoder", &mut out);
        self.decoder.parts("decoder", &mut out);
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".into(), BasePart::Linear(head)));
        }
        out
    }

    /// Every weight by its checkpoint name, for turning chosen ones into variables (freeze and
    /// full fine-tuning).
    pub fn base_weights_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, &mut Tensor)> = vec![("shared.weight".into(), &mut self.shared)];
        self.encoder.weights_mut("encoder", &mut out);
        self.decoder.weights_mut("decoder", &mut out);
        if let Some(head) = &mut self.lm_head {
            dense_weight(head, &mut out);
        }
        out
    }

    /// Refuses what no weight can hold: prompt and prefix tuning's virtual tokens.
    pub fn check_mergeable(&self) -> Result<()> {
        match self.prompt.is_some() || self.prefix.is_some() {
            true => Err(EngineError::config(
                "merge",
                "prompt and prefix tuning add virtual tokens, which no weight can hold; export the \
                 adapter instead of a merged model",
            )),
            false => Ok(()),
        }
    }
}
