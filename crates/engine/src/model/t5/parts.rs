//! A T5's weights by their transformers names (`shared.weight`,
//! `encoder.block.0.layer.0.SelfAttention.q.weight`, …), for a merged export: norms and
//! tables as they are, projections with their adapters to fold in.

use super::{Block, Stack, T5Model};
use crate::error::{EngineError, Result};
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
