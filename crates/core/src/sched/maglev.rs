//! `maglev`: weighted Maglev hashing (Eisenbud et al., NSDI'16).
//!
//! The table has `M` slots (`maglev_table_size`, a prime; default 65537) and is built from the
//! *eligible* backends only, sorted by canonical address (`canonical_addr`, bytewise), so it is
//! a pure function of the backend set, its weights and `M`:
//!
//! - each backend's permutation is `offset + j * skip (mod M)` with
//!   `offset = jhash(addr, OFFSET_SEED) % M` and `skip = jhash(addr, SKIP_SEED) % (M - 1) + 1`
//!   (`addr` the canonical address text, `jhash` as in [`crate::hash::jhash`]);
//! - each backend's *quota* is `floor(M * w / W)` or that plus one: the `M - sum(floor)` left
//!   over slots go to the largest remainders `M * w mod W`, ties in sorted order;
//! - population runs in rounds over the sorted backends: each round a backend adds its weight
//!   to an accumulator and, when that reaches the largest weight, subtracts it and takes the
//!   next free slot of its permutation; a backend stops taking slots at its quota. So every
//!   backend holds exactly its quota: the floor or ceiling of its weighted share. With equal
//!   weights this is the paper's algorithm exactly.
//!
//! A flow goes to `table[hash % M]`; if that backend is excluded (already tried), to the next
//! slot forward (wrapping) holding a backend that is not.

use std::collections::HashMap;

use super::common::{first_candidate, sorted_eligible, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::hash::{jhash, jhash2};
use crate::model::{canonical_addr, Backend, PrimeTableSize, SchedulerKind};

/// Seed of the permutation offset ("Magl").
pub const OFFSET_SEED: u32 = 0x4d61_676c;
/// Seed of the permutation skip ("Skip").
pub const SKIP_SEED: u32 = 0x536b_6970;

/// A weighted Maglev lookup table and the scheduler over it.
#[derive(Debug, Clone)]
pub struct Maglev {
    eligible: Eligible,
    size: u32,
    /// `M` entries (or none without eligible backends): indices into the backend slice.
    table: Vec<u32>,
    /// Canonical addresses of the table's backends, sorted.
    sorted_addrs: Vec<String>,
    /// For each backend-slice index, its position in `sorted_addrs` (`u32::MAX` if absent).
    rank_of: Vec<u32>,
}

/// One backend's permutation and pacing during population.
struct Lane {
    pos: u32,
    skip: u32,
    weight: u64,
    acc: u64,
    quota: u32,
    taken: u32,
}

impl Maglev {
    /// Builds the table of size `size` over the eligible backends of `backends`.
    pub fn new(backends: &[Backend], size: PrimeTableSize) -> Self {
        let m = size.get();
        let sorted = sorted_eligible(backends);
        let weights: Vec<u32> = sorted
            .iter()
            .map(|(_, i)| backends[*i].weight.get())
            .collect();
        let mut lanes = lanes(&sorted, &weights, m);
        let owners: Vec<u32> = sorted.iter().map(|(_, i)| *i as u32).collect();
        let table = populate(&mut lanes, &owners, m);
        let mut rank_of = vec![u32::MAX; backends.len()];
        for (rank, (_, i)) in sorted.iter().enumerate() {
            rank_of[*i] = rank as u32;
        }
        Self {
            eligible: Eligible::new(backends),
            size: m,
            table,
            sorted_addrs: sorted.into_iter().map(|(a, _)| a).collect(),
            rank_of,
        }
    }

    /// The lookup table: `M` indices into the backend slice given to [`Maglev::new`]
    /// (empty when no backend is eligible).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The table size `M`.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The slot of a flow hash: `hash % M`.
    pub fn slot(&self, hash: u32) -> usize {
        (hash % self.size) as usize
    }

    /// A checksum of the table that depends only on the backend set (addresses and weights)
    /// and `M`, not on listing order: `jhash2` over the slots' owner ranks in canonical
    /// address order, then `jhash` of each sorted canonical address chained as the seed.
    pub fn table_checksum(&self) -> u32 {
        let ranks: Vec<u32> = self
            .table
            .iter()
            .map(|&i| self.rank_of[i as usize])
            .collect();
        self.sorted_addrs
            .iter()
            .fold(jhash2(&ranks, self.size), |c, a| jhash(a.as_bytes(), c))
    }
}

/// The lanes of the sorted backends: permutation start, skip, weight and quota.
fn lanes(sorted: &[(String, usize)], weights: &[u32], m: u32) -> Vec<Lane> {
    let quotas = quotas(weights, m);
    sorted
        .iter()
        .zip(weights)
        .zip(quotas)
        .map(|(((addr, _), &w), quota)| Lane {
            pos: jhash(addr.as_bytes(), OFFSET_SEED) % m,
            skip: jhash(addr.as_bytes(), SKIP_SEED) % (m - 1) + 1,
            weight: u64::from(w),
            acc: 0,
            quota,
            taken: 0,
        })
        .collect()
}

/// Largest-remainder quotas: `floor(m * w / W)` plus one for the `m - sum` largest
/// remainders (ties: the earlier position).
fn quotas(weights: &[u32], m: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let share = |w: u32| u64::from(m) * u64::from(w);
    let mut q: Vec<u32> = weights.iter().map(|&w| (share(w) / total) as u32).collect();
    let left = m - q.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(share(weights[k]) % total), k));
    for &k in order.iter().take(left as usize) {
        q[k] += 1;
    }
    q
}

/// Fills the table as described in the module documentation; lane `k` writes `owners[k]`.
fn populate(lanes: &mut [Lane], owners: &[u32], m: u32) -> Vec<u32> {
    let Some(max_w) = lanes.iter().map(|l| l.weight).max() else {
        return Vec::new();
    };
    // Every slot is written exactly once (the quotas sum to `m`).
    let mut table = vec![0; m as usize];
    let mut used = Used::new(m);
    let mut active: Vec<usize> = (0..lanes.len()).filter(|&k| lanes[k].quota > 0).collect();
    let mut filled = 0u32;
    while filled < m {
        let mut took = false;
        for &k in &active {
            let lane = &mut lanes[k];
            lane.acc += lane.weight;
            if lane.acc < max_w {
                continue;
            }
            lane.acc -= max_w;
            take_next_free(lane, &mut used, &mut table, owners[k], m);
            filled += 1;
            took = true;
        }
        active.retain(|&k| lanes[k].taken < lanes[k].quota);
        if !took {
            skip_idle_rounds(lanes, &active, max_w);
        }
    }
    table
}

/// Occupancy of the table during population: one bit per slot (8 KiB at M = 65537, so the
/// probing stays in L1 while the `u32` table is only written once per slot).
struct Used(Vec<u64>);

impl Used {
    fn new(m: u32) -> Self {
        Self(vec![0; (m as usize).div_ceil(64)])
    }

    /// Marks `slot` used; `false` if it already was.
    #[inline]
    fn claim(&mut self, slot: u32) -> bool {
        let (word, bit) = ((slot >> 6) as usize, 1u64 << (slot & 63));
        let free = self.0[word] & bit == 0;
        self.0[word] |= bit;
        free
    }
}

/// Takes the next free slot of the lane's permutation (the table has one).
#[inline]
fn take_next_free(lane: &mut Lane, used: &mut Used, table: &mut [u32], owner: u32, m: u32) {
    loop {
        let slot = lane.pos;
        lane.pos += lane.skip;
        if lane.pos >= m {
            lane.pos -= m;
        }
        if used.claim(slot) {
            table[slot as usize] = owner;
            lane.taken += 1;
            return;
        }
    }
}

/// After a round in which no lane fired, advances every active lane by the rounds that
/// would also be idle (the same result as running them, only faster).
fn skip_idle_rounds(lanes: &mut [Lane], active: &[usize], max_w: u64) {
    let idle = active
        .iter()
        .map(|&k| (max_w - lanes[k].acc).div_ceil(lanes[k].weight) - 1)
        .min()
        .unwrap_or(0);
    for &k in active {
        lanes[k].acc += idle * lanes[k].weight;
    }
}

impl Scheduler for Maglev {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Maglev
    }

    fn pick(&self, req: &PickRequest<'_>) -> Result<usize, PickError> {
        let start = if self.table.is_empty() {
            0
        } else {
            self.slot(req.hash)
        };
        first_candidate(&self.eligible, &self.table, start, req.exclude)
    }

    fn as_maglev(&self) -> Option<&Maglev> {
        Some(self)
    }
}

/// The share (0..=1) of table slots whose owner *address* differs between `old` (built from
/// `old_backends`) and `new` (built from `new_backends`): the live disruption of a change.
/// Tables of different sizes count as fully moved (1.0); two empty tables as 0.0, one
/// empty table as 1.0.
pub fn moved_ratio(
    old: &Maglev,
    old_backends: &[Backend],
    new: &Maglev,
    new_backends: &[Backend],
) -> f64 {
    match (old.table.is_empty(), new.table.is_empty()) {
        (true, true) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        (false, false) if old.table.len() != new.table.len() => return 1.0,
        (false, false) => {}
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id_of = |b: &Backend| {
        let next = ids.len() as u32;
        *ids.entry(canonical_addr(&b.address)).or_insert(next)
    };
    let old_ids: Vec<u32> = old_backends.iter().map(&mut id_of).collect();
    let new_ids: Vec<u32> = new_backends.iter().map(&mut id_of).collect();
    let moved = old
        .table
        .iter()
        .zip(&new.table)
        .filter(|(&o, &n)| old_ids[o as usize] != new_ids[n as usize])
        .count();
    moved as f64 / old.table.len() as f64
}
