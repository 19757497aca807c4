//! A GGUF header walked by hand, for what candle's reader cannot say: which tensor holds a
//! type it does not know. candle stops at the first such tensor with only the type's number.

use std::io::Read;

/// Every tensor's name and type number, in file order; `None` if the header is not one this
/// walk understands (the caller then keeps candle's own message).
pub fn tensor_types(file: &mut impl Read) -> Option<Vec<(String, u32)>> {
    let mut r = Reader(file);
    if r.bytes(4)? != b"GGUF" {
        return None;
    }
    let version = r.u32()?;
    let wide = version >= 2;
    let count = |r: &mut Reader<_>| {
        if wide {
            r.u64()
        } else {
            r.u32().map(u64::from)
        }
    };
    let (tensors, kvs) = (count(&mut r)?, count(&mut r)?);
    for _ in 0..kvs {
        r.string(wide)?;
        let ty = r.u32()?;
        r.skip_value(ty, wide, 0)?;
    }
    let mut out = Vec::new();
    for _ in 0..tensors.min(1 << 20) {
        let name = r.string(wide)?;
        let dims = r.u32()?;
        for _ in 0..dims.min(8) {
            count(&mut r)?;
        }
        out.push((name, r.u32()?));
        r.u64()?;
    }
    Some(out)
}

/// llama.cpp's name for a type number (`ggml.h`'s `ggml_type`).
pub fn type_name(id: u32) -> String {
    let known = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    known
        .iter()
        .find(|(i, _)| *i == id)
        .map_or_else(|| format!("type {id}"), |(_, n)| format!("{n} (type {id})"))
}

struct Reader<'a, R>(&'a mut R);

impl<R: Read> Reader<'_, R> {
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        // Hostile lengths: read what is there, never allocate what a header claims.
        let mut buf = Vec::new();
        self.0.by_ref().take(n as u64).read_to_end(&mut buf).ok()?;
        (buf.len() == n).then_some(buf)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn string(&mut self, wide: bool) -> Option<String> {
        let len = if wide {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        String::from_utf8(self.bytes(usize::try_from(len).ok()?)?).ok()
    }

    /// Skips one metadata value of type `ty` (GGUF's `gguf_type`), arrays nested at most a
    /// few deep (a hostile file must not exhaust the stack).
    fn skip_value(&mut self, ty: u32, wide: bool, depth: usize) -> Option<()> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(wide).map(|_| ()),
            9 if depth < 4 => {
                let item = self.u32()?;
                let len = if wide {
                    self.u64()?
                } else {
                    u64::from(self.u32()?)
                };
                for _ in 0..len {
                    self.skip_value(item, wide, depth + 1)?;
                }
                return Some(());
            }
            _ => return None,
        };
        self.bytes(size).map(|_| ())
    }
}
