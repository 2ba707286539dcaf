//! `p2c`: power of two choices: two weighted-random candidates, the less loaded one wins.
//!
//! The first candidate comes from `req.random`, the second from `req.random` rotated by 32
//! bits (its other half); if both are the same backend and others are left, the second is
//! redrawn (up to [`REDRAWS`] times, with a splitmix64 step). The candidate with the lower
//! `active / weight` (cross-multiplied) wins; on a tie, the first.

use super::common::{less_loaded, WeightedPicker};
use super::{PickError, PickRequest, Scheduler};
use crate::model::{Backend, SchedulerKind};

/// How many times a second candidate equal to the first is redrawn.
pub const REDRAWS: usize = 3;

/// Power of two (weighted) random choices.
#[derive(Debug)]
pub struct PowerOfTwo {
    picker: WeightedPicker,
}

impl PowerOfTwo {
    /// Builds over the eligible backends of `backends`.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            picker: WeightedPicker::new(backends),
        }
    }
}

/// One splitmix64 step (a bijective mixer).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Scheduler for PowerOfTwo {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::PowerOfTwo
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let p = &self.picker;
        let (first, second) = two_positions(p, req.random, req.exclude)?;
        let (a, b) = (p.eligible.idx[first], p.eligible.idx[second]);
        let (wa, wb) = (p.weights[first], p.weights[second]);
        if less_loaded(req.loads.active(b), wb, req.loads.active(a), wa) {
            Ok(b)
        } else {
            Ok(a)
        }
    }
}

/// The two candidate positions (into `p.eligible.idx`) of one power-of-two pick: the first
/// from `random`, the second from `random` rotated by 32 bits, redrawn while equal to the
/// first (see the module doc). Shared with `least_request` and `peak_ewma`.
pub(crate) fn two_positions(
    p: &WeightedPicker,
    random: u64,
    exclude: &[usize],
) -> Result<(usize, usize), PickError> {
    let first = p
        .pick_pos(random, exclude)
        .ok_or_else(|| p.eligible.error())?;
    let mut r = random.rotate_left(32);
    let mut second = p.pick_pos(r, exclude).unwrap_or(first);
    for _ in 0..REDRAWS {
        if second != first {
            break;
        }
        r = splitmix64(r);
        second = p.pick_pos(r, exclude).unwrap_or(first);
    }
    Ok((first, second))
}
