//! Buffers of packed bf16 operands kept between products (`bf16_matmul::Packed`): a backward
//! pass packs a weight for every product, and a fresh buffer cost a zeroing and a page fault
//! per page each time.

/// Buffers given back (fresh ones were a tenth of a 1.07B bf16 step on the AMX VM). At most
/// [`SPARES`] are kept, the largest no larger than the largest packing a step makes, so the
/// peak is unchanged.
static SPARE_WORDS: std::sync::Mutex<Vec<Vec<u32>>> = std::sync::Mutex::new(Vec::new());
const SPARES: usize = 8;

/// `len` words, from the smallest spare buffer that holds them but not twice over (so that a
/// small packing does not take the buffer a large one needs next), its old contents left in
/// place (the packing overwrites every word); else zeros.
pub(super) fn take(len: usize) -> Vec<u32> {
    let spare = SPARE_WORDS.lock().ok().and_then(|mut spares| {
        let i = (0..spares.len())
            .filter(|&i| (len..=2 * len).contains(&spares[i].capacity()))
            .min_by_key(|&i| spares[i].capacity())?;
        Some(spares.swap_remove(i))
    });
    match spare {
        Some(mut words) => {
            words.resize(len, 0);
            words
        }
        None => vec![0; len],
    }
}

/// Keeps `words` for a later [`take`], if there is room or it is larger than a kept one.
pub(super) fn give_back(words: Vec<u32>) {
    if words.capacity() == 0 {
        return;
    }
    if let Ok(mut spares) = SPARE_WORDS.lock() {
        if spares.len() < SPARES {
            spares.push(words);
        } else if let Some(smallest) = spares.iter_mut().min_by_key(|w| w.capacity()) {
            if smallest.capacity() < words.capacity() {
                *smallest = words;
            }
        }
    }
}
