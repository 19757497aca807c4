//! Softmax's inner loops written so the compiler vectorises them: libm's `expf` is called
//! one value at a time, and a single running sum serialises on the adder's latency.

/// `e^x` for `x ≤ 0` (arguments minus their row's maximum), to within 2 ulp; values below
/// −87 give ~1e−38 instead of underflowing.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on [−ln2/2, ln2/2]: Taylor terms to r⁶ (error < 2e−8 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ built in the exponent bits; n ∈ [−126, 0] here.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The logistic function `1 / (1 + e^−x)`, through `exp_nonpositive` on either side of 0.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    if x >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `x ← e^(x − shift)` for every element (`shift` at least every element: the row maximum).
pub fn exp_shifted(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp_nonpositive(*x - shift);
    }
}

/// The maximum of a row (−∞ for an empty one).
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    tail.iter()
        .chain(&acc)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of a row, in eight interleaved partial sums.
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_across_its_range() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let mut v = [x];
            exp_shifted(&mut v, 0.0);
            let exact = (x as f64).exp();
            worst = worst.max((v[0] as f64 - exact).abs() / exact);
        }
        assert!(worst < 1e-6, "worst relative error {worst:e}");
    }

    #[test]
    fn sigmoid_matches_f64_on_both_sides() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - exact).abs() < 1e-6, "sigmoid({x})");
        }
    }

    #[test]
    fn max_and_sum_cover_the_tail() {
        let xs: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(max(&xs), 18.0);
        assert_eq!(sum(&xs), 171.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
