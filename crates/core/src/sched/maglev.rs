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

use super::common::{first_candidate, sorted_eligible, Eligible};
use super::{PickError, PickRequest, Scheduler};
use crate::hash::{jhash, jhash2};
use crate::model::{Backend, CanonicalAddr, PrimeTableSize, SchedulerKind};

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
    sorted_addrs: Vec<CanonicalAddr>,
    /// For each backend-slice index, its position in `sorted_addrs` (`u32::MAX` if absent).
    rank_of: Vec<u32>,
    /// Parallel to `sorted_addrs`: each backend's permutation (start, skip), for
    /// [`Maglev::new_after`].
    perms: Vec<[u32; 2]>,
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
        Self::from_sorted(backends, &sorted_lanes(backends, m), m)
    }

    /// The same table as [`Maglev::new`]`(backends, size)`, with the per-backend work
    /// (canonical address text, permutation hashes, the sort) carried over from `prev`
    /// (built from `prev_backends`) for the backends that stay: a backend change of a large
    /// pool (an admin API add or removal) computes it only for the backends that came or
    /// changed, and merges them into `prev`'s order instead of sorting again. The kept
    /// backends are paired with `prev_backends`' in listing order (same address, weight and
    /// zone-blind eligibility), so their order among themselves is the one a sort gives (the
    /// sort key is the canonical address, the weight, then the listing position); the
    /// tests compare the two builds. `prev` of another size is no help: [`Maglev::new`].
    pub fn new_after(
        prev: &Maglev,
        prev_backends: &[Backend],
        backends: &[Backend],
        size: PrimeTableSize,
    ) -> Self {
        let m = size.get();
        if prev.size != m || prev.rank_of.len() != prev_backends.len() {
            return Self::new(backends, size);
        }
        // Each previous backend's index in `backends` when it is kept (`u32::MAX`: not).
        let mut kept = vec![u32::MAX; prev_backends.len()];
        let mut is_kept = vec![false; backends.len()];
        let mut j = 0;
        for (i, b) in backends.iter().enumerate() {
            // A backend that went (the next one is this one) is passed over; one that came
            // leaves `j` where it is. Anything else is built afresh, which is only slower.
            if prev_backends.get(j).is_some_and(|o| o.address != b.address)
                && prev_backends
                    .get(j + 1)
                    .is_some_and(|o| o.address == b.address)
            {
                j += 1;
            }
            let Some(o) = prev_backends.get(j).filter(|o| o.address == b.address) else {
                continue;
            };
            if b.is_eligible() && o.weight == b.weight && prev.rank_of[j] != u32::MAX {
                kept[j] = i as u32;
                is_kept[i] = true;
            }
            j += 1;
        }
        // The kept lanes in `prev`'s order.
        let mut owner_of = vec![u32::MAX; prev.sorted_addrs.len()];
        for (j, &r) in prev.rank_of.iter().enumerate() {
            if r != u32::MAX {
                owner_of[r as usize] = j as u32;
            }
        }
        let mut lanes: Vec<SortedLane> = Vec::with_capacity(backends.len());
        for (r, &j) in owner_of.iter().enumerate() {
            let Some(&i) = kept.get(j as usize).filter(|&&i| i != u32::MAX) else {
                continue;
            };
            let [pos, skip] = prev.perms[r];
            lanes.push(SortedLane {
                addr: prev.sorted_addrs[r],
                weight: backends[i as usize].weight.get(),
                owner: i,
                pos,
                skip,
            });
        }
        // The others, sorted, then merged in.
        let (fresh_idx, fresh): (Vec<usize>, Vec<Backend>) = backends
            .iter()
            .enumerate()
            .filter(|&(i, b)| !is_kept[i] && b.is_eligible())
            .map(|(i, b)| (i, b.clone()))
            .unzip();
        if fresh.is_empty() {
            return Self::from_sorted(backends, &lanes, m);
        }
        let mut fresh_lanes = sorted_lanes(&fresh, m);
        for l in &mut fresh_lanes {
            l.owner = fresh_idx[l.owner as usize] as u32;
        }
        let key = |l: &SortedLane| (l.addr, l.weight, l.owner);
        let mut sorted = Vec::with_capacity(lanes.len() + fresh_lanes.len());
        let mut rest = lanes.as_slice();
        for l in fresh_lanes {
            let at = rest.partition_point(|k| key(k) < key(&l));
            sorted.extend_from_slice(&rest[..at]);
            sorted.push(l);
            rest = &rest[at..];
        }
        sorted.extend_from_slice(rest);
        Self::from_sorted(backends, &sorted, m)
    }

    fn from_sorted(backends: &[Backend], sorted: &[SortedLane], m: u32) -> Self {
        let weights: Vec<u32> = sorted.iter().map(|e| e.weight).collect();
        let quotas = quotas(&weights, m);
        let table = populate(sorted, &quotas, m);
        let mut rank_of = vec![u32::MAX; backends.len()];
        for (rank, e) in sorted.iter().enumerate() {
            rank_of[e.owner as usize] = rank as u32;
        }
        Self {
            eligible: Eligible::new(backends),
            size: m,
            table,
            sorted_addrs: sorted.iter().map(|e| e.addr).collect(),
            rank_of,
            perms: sorted.iter().map(|e| [e.pos, e.skip]).collect(),
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

/// One eligible backend, for [`populate`]: its canonical address, weight, index into the
/// backend slice and permutation (start and skip).
#[derive(Clone, Copy)]
struct SortedLane {
    addr: CanonicalAddr,
    weight: u32,
    owner: u32,
    pos: u32,
    skip: u32,
}

/// The eligible backends in the table's order (canonical address bytewise, then weight,
/// then listing order: the order of [`sorted_eligible`]), with their permutations. No
/// strings: the address text is written into a fixed buffer and sorted by its big-endian
/// words.
fn sorted_lanes(backends: &[Backend], m: u32) -> Vec<SortedLane> {
    /// Address words, weight, listing position.
    type Key = ([u64; 6], u32, u32);
    // Sized once: at 10,000 backends growing them push by push (a copy and fresh pages at
    // each doubling) was a fifth of an API change's table build.
    let mut lanes: Vec<SortedLane> = Vec::with_capacity(backends.len());
    let mut keys: Vec<Key> = Vec::with_capacity(backends.len());
    // What is sorted: the first 16 bytes of the text (all of most IPv4 texts) and the lane's
    // place, 24 bytes an entry instead of the 64 of the whole key with its place (at 10,000
    // backends the sort was a tenth of a build, `perf record`); entries that tie there are
    // then ordered by the whole key, so the order is the same. A 10,000-backend build went
    // from 2.05 to 1.74 ms (docs/benchmarks.md, Core, "fourth round").
    let mut order: Vec<(u64, u64, u32)> = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate().filter(|(_, b)| b.is_eligible()) {
        let addr = CanonicalAddr::new(&b.address);
        let text = addr.as_bytes();
        let weight = b.weight.get();
        let key = (addr.sort_key(), weight, i as u32);
        order.push((key.0[0], key.0[1], lanes.len() as u32));
        keys.push(key);
        lanes.push(SortedLane {
            addr,
            weight,
            owner: i as u32,
            pos: jhash(text, OFFSET_SEED) % m,
            skip: jhash(text, SKIP_SEED) % (m - 1) + 1,
        });
    }
    order.sort_unstable();
    for run in order.chunk_by_mut(|a, b| (a.0, a.1) == (b.0, b.1)) {
        if run.len() > 1 {
            run.sort_unstable_by_key(|&(_, _, at)| keys[at as usize]);
        }
    }
    order.iter().map(|&(_, _, at)| lanes[at as usize]).collect()
}

/// The lanes of the sorted backends: permutation start, skip, weight and quota.
fn lanes(sorted: &[(String, usize)], weights: &[u32], m: u32) -> Vec<Lane> {
    let quotas = quotas_sorted(weights, m);
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
    // Each lane's floor and remainder, divided once per run of equal weights (a pool's
    // weights are mostly equal): two 64-bit divisions per lane were most of this function.
    let mut last: Option<(u32, u32, u64)> = None;
    let mut q = Vec::with_capacity(weights.len());
    let mut order: Vec<(std::cmp::Reverse<u64>, u32)> = Vec::with_capacity(weights.len());
    for (k, &w) in weights.iter().enumerate() {
        let (floor, rem) = match last {
            Some((lw, f, r)) if lw == w => (f, r),
            _ => {
                let share = u64::from(m) * u64::from(w);
                let (f, r) = ((share / total) as u32, share % total);
                last = Some((w, f, r));
                (f, r)
            }
        };
        q.push(floor);
        order.push((std::cmp::Reverse(rem), k as u32));
    }
    let left = (m - q.iter().sum::<u32>()) as usize;
    if left == 0 {
        return q;
    }
    // Which `left` lanes get one more is a selection, not an order: the keys (remainder
    // descending, then position) are distinct, so the `left` smallest are one set however
    // they are found, and a selection is linear. With one remainder for all (equal
    // weights) they are the first `left` positions, as listed.
    let one_remainder = order.windows(2).all(|p| p[0].0 == p[1].0);
    if !one_remainder && left < order.len() {
        order.select_nth_unstable(left - 1);
    }
    for &(_, k) in order.iter().take(left) {
        q[k as usize] += 1;
    }
    q
}

/// [`quotas`] as first written (a stable sort of every position by remainder), for
/// [`populate_reference`]: the reference build stays independent of the selection.
fn quotas_sorted(weights: &[u32], m: u32) -> Vec<u32> {
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

/// Fills the table as described in the module documentation; lane `k` writes
/// `lanes[k].owner`.
///
/// Each lane takes "the next free slot of its permutation". While many slots are free that
/// is found by probing the permutation (one byte per slot); once at most [`TAIL`] slots are
/// free (where probing costs about `M / free` steps per slot taken, most of a build), the
/// free slots are kept in a list and a lane takes the one it would reach first: the fewest
/// steps `((slot - pos) mod M) x skip^-1 mod M` from its position. Both give the same slot,
/// so the table is the same ([`populate_reference`] is the plain probing, and the tests
/// compare the two). The lanes' state is kept in separate arrays (the probing reads only
/// positions and skips), and each round first lists the lanes whose weight fires, without a
/// branch per lane, then lets them take their slots in order. Once a quarter of the table is
/// taken, a lane probes four permutation entries at a time ([`probe_four`]): whether a
/// probe finds a free slot is then a coin toss the branch predictor loses, and testing four
/// at once makes that one mostly-predictable branch per four probes.
fn populate(lanes: &[SortedLane], quotas: &[u32], m: u32) -> Vec<u32> {
    populate_with(lanes, quotas, m, m / 4)
}

/// [`populate`], probing four entries at a time once `four_from` slots are taken (`u32::MAX`:
/// never, the build before [`probe_four`]).
///
/// Occupancy is a byte per slot ([`probe_one`], [`probe_four`]): a probe is a load and a
/// compare where a bit needed a variable shift, and four probes combine into one word
/// whose first free byte `trailing_zeros` finds (64 KiB at M = 65537: L1 and L2 here; the
/// 8 KiB bitmap took more instructions per probe).
/// Each round's firing lanes are taken in runs that stay in one phase (one probe at a
/// time, four, the list of free slots), so no take tests the phase; with equal weights
/// every lane fires every round and the active list is the firing list. Measured against
/// the bitmap build in the same run (docs/benchmarks.md, Core, "fifth round").
fn populate_with(lanes: &[SortedLane], quotas: &[u32], m: u32, four_from: u32) -> Vec<u32> {
    let Some(max_w) = lanes.iter().map(|l| u64::from(l.weight)).max() else {
        return Vec::new();
    };
    let all_fire = lanes.iter().all(|l| u64::from(l.weight) == max_w);
    let mut pos: Vec<u32> = lanes.iter().map(|l| l.pos).collect();
    let skip: Vec<u32> = lanes.iter().map(|l| l.skip).collect();
    let owner: Vec<u32> = lanes.iter().map(|l| l.owner).collect();
    let weight: Vec<u64> = lanes.iter().map(|l| u64::from(l.weight)).collect();
    let mut acc = vec![0u64; lanes.len()];
    let mut left = quotas.to_vec();
    let mut active: Vec<u32> = (0..lanes.len() as u32)
        .filter(|&k| left[k as usize] > 0)
        .collect();
    let mut fired: Vec<u32> = if all_fire {
        Vec::new()
    } else {
        vec![0; lanes.len()]
    };
    // Every slot is written exactly once (the quotas sum to `m`).
    let mut table = vec![0; m as usize];
    // 1: taken.
    let mut used = vec![0u8; m as usize];
    let mut free = Tail::new(m);
    let tail_from = m.saturating_sub(TAIL);
    let four_from = four_from.min(tail_from);
    let mut filled = 0u32;
    while filled < m {
        let list: &[u32] = if all_fire {
            &active
        } else {
            // The lanes that fire this round, in order.
            let mut n = 0;
            for &k in &active {
                let k = k as usize;
                let a = acc[k] + weight[k];
                let fire = a >= max_w;
                acc[k] = if fire { a - max_w } else { a };
                fired[n] = k as u32;
                n += usize::from(fire);
            }
            if n == 0 {
                // As many rounds as would also be idle, at once.
                let idle = active
                    .iter()
                    .map(|&k| (max_w - acc[k as usize]).div_ceil(weight[k as usize]) - 1)
                    .min()
                    .unwrap_or(0);
                for &k in &active {
                    acc[k as usize] += idle * weight[k as usize];
                }
                continue;
            }
            &fired[..n]
        };
        let mut at = 0;
        while at < list.len() {
            // The run of this round's takes that stays in the current phase.
            let phase_end = if filled < four_from {
                four_from
            } else if filled < tail_from {
                tail_from
            } else {
                m
            };
            let end = list.len().min(at + (phase_end - filled) as usize);
            let run = &list[at..end];
            if filled < four_from {
                for &k in run {
                    let k = k as usize;
                    table[probe_one(&mut pos[k], skip[k], &mut used, m) as usize] = owner[k];
                    left[k] -= 1;
                }
            } else if filled < tail_from {
                for &k in run {
                    let k = k as usize;
                    table[probe_four(&mut pos[k], skip[k], &mut used, m) as usize] = owner[k];
                    left[k] -= 1;
                }
            } else {
                if !free.on {
                    free.start(&used, lanes.len());
                }
                for &k in run {
                    let k = k as usize;
                    table[free.take(k, &mut pos[k], skip[k], m) as usize] = owner[k];
                    left[k] -= 1;
                }
            }
            filled += run.len() as u32;
            at = end;
        }
        active.retain(|&k| left[k as usize] > 0);
    }
    table
}

/// How many free slots are left when [`populate`] switches from probing to the list of free
/// slots (probing then costs about `M / TAIL` steps per slot, the list `TAIL` multiplications).
const TAIL: u32 = 192;

/// The free slots of the table's last [`TAIL`] (see [`populate`]).
struct Tail {
    on: bool,
    slots: Vec<u32>,
    /// `floor(2^64 / m)`, for Barrett reduction modulo `m`.
    barrett: u64,
    /// Per lane, `skip^-1 mod M`, computed when first needed (0: not yet).
    inverse: Vec<u32>,
}

impl Tail {
    fn new(m: u32) -> Self {
        Self {
            on: false,
            slots: Vec::new(),
            barrett: u64::MAX / u64::from(m),
            inverse: Vec::new(),
        }
    }

    /// Lists the free slots of the occupancy bytes `used` (0: free), for `lanes` lanes;
    /// eight bytes at a time.
    fn start(&mut self, used: &[u8], lanes: usize) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        self.slots.clear();
        self.inverse = vec![0; lanes];
        let mut chunks = used.chunks_exact(8);
        let mut base = 0u32;
        for chunk in chunks.by_ref() {
            let bytes = <[u8; 8]>::try_from(chunk).unwrap_or([1; 8]);
            let mut free = !u64::from_le_bytes(bytes) & ONES;
            while free != 0 {
                self.slots.push(base + free.trailing_zeros() / 8);
                free &= free - 1;
            }
            base += 8;
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            if b == 0 {
                self.slots.push(base + i as u32);
            }
        }
        self.on = true;
    }

    /// `x mod m` for `x < 2^64` (`m < 2^32`): Barrett's estimate is low by at most one.
    #[inline]
    fn reduce(&self, x: u64, m: u64) -> u64 {
        let q = ((u128::from(x) * u128::from(self.barrett)) >> 64) as u64;
        let r = x - q * m;
        if r >= m {
            r - m
        } else {
            r
        }
    }

    /// The free slot the permutation at `pos` with `skip` reaches first, taken; `pos`
    /// moves past it.
    fn take(&mut self, lane: usize, pos: &mut u32, skip: u32, m: u32) -> u32 {
        let inv = match self.inverse.get_mut(lane) {
            Some(0) | None => {
                let inv = inverse_mod(skip, m);
                if let Some(slot) = self.inverse.get_mut(lane) {
                    *slot = inv;
                }
                inv
            }
            Some(&mut inv) => inv,
        };
        let inv = u64::from(inv);
        let (mm, p) = (u64::from(m), u64::from(*pos));
        // The fewest steps, and the first such place: both in one word, taken without a
        // branch (steps < M < 2^32; a compare per slot was a mispredicted branch at each new
        // minimum).
        let mut best = u64::MAX;
        for (i, &s) in self.slots.iter().enumerate() {
            let s = u64::from(s);
            let diff = if s >= p { s - p } else { s + mm - p };
            best = best.min(self.reduce(diff * inv, mm) << 32 | i as u64);
        }
        let slot = self.slots.swap_remove((best & 0xffff_ffff) as usize);
        *pos = slot + skip;
        if *pos >= m {
            *pos -= m;
        }
        slot
    }
}

/// `a^-1 mod m` for a prime `m` and `0 < a < m` (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(i64::from(m)) as u32
}

/// The table as [`populate`] built it before [`probe_four`] (one probe at a time throughout):
/// the baseline of the build-time benchmark, in the same run.
#[doc(hidden)]
pub fn populate_one_at_a_time(backends: &[Backend], size: PrimeTableSize) -> Vec<u32> {
    let m = size.get();
    let sorted = sorted_lanes(backends, m);
    let weights: Vec<u32> = sorted.iter().map(|e| e.weight).collect();
    populate_with(&sorted, &quotas(&weights, m), m, u32::MAX)
}

/// The plain population: every lane probes its permutation to the next free slot until the
/// table is full. The reference [`populate`] must agree with (its tests and benchmark).
#[doc(hidden)]
pub fn populate_reference(backends: &[Backend], size: PrimeTableSize) -> Vec<u32> {
    let m = size.get();
    let sorted = sorted_eligible(backends);
    let weights: Vec<u32> = sorted
        .iter()
        .map(|(_, i)| backends[*i].weight.get())
        .collect();
    let mut lanes = lanes(&sorted, &weights, m);
    let owners: Vec<u32> = sorted.iter().map(|(_, i)| *i as u32).collect();
    let Some(max_w) = lanes.iter().map(|l| l.weight).max() else {
        return Vec::new();
    };
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
            let slot = probe_next_free(&mut lane.pos, lane.skip, &mut used, m);
            table[slot as usize] = owners[k];
            lane.taken += 1;
            filled += 1;
            took = true;
        }
        active.retain(|&k| lanes[k].taken < lanes[k].quota);
        if !took {
            skip_idle_rounds(&mut lanes, &active, max_w);
        }
    }
    table
}

/// Occupancy of the table during the plain population ([`populate_reference`]): one bit per
/// slot (8 KiB at M = 65537, so the probing stays in L1 while the `u32` table is only written
/// once per slot).
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

/// Probes the lane's permutation to its next free slot (the table has one), marks it used
/// and returns it.
#[inline]
fn probe_next_free(pos: &mut u32, skip: u32, used: &mut Used, m: u32) -> u32 {
    loop {
        let slot = *pos;
        let next = slot + skip;
        *pos = if next >= m { next - m } else { next };
        if used.claim(slot) {
            return slot;
        }
    }
}

/// `a + b mod m` for `a, b < m`, given `mb = m - b`: one subtraction, its borrow choosing
/// between it and the plain sum (no `%`, no branch).
#[inline]
fn add_mod(a: u32, b: u32, mb: u32) -> u32 {
    let (d, borrow) = a.overflowing_sub(mb);
    if borrow {
        a + b
    } else {
        d
    }
}

/// [`probe_next_free`] on the occupancy bytes of [`populate_with`] (0: free).
#[inline]
fn probe_one(pos: &mut u32, skip: u32, used: &mut [u8], m: u32) -> u32 {
    let ms = m - skip;
    loop {
        let slot = *pos;
        *pos = add_mod(slot, skip, ms);
        if used[slot as usize] == 0 {
            used[slot as usize] = 1;
            return slot;
        }
    }
}

/// The same as [`probe_one`], four permutation entries at a time: four independent chains
/// (`pos + i * skip`, stepping by `4 * skip`), their four bytes in one word, and one branch
/// per four probes on whether any of them is free; the first free one in permutation order
/// is taken, so the slot is the one single-stepping finds.
#[inline]
fn probe_four(pos: &mut u32, skip: u32, used: &mut [u8], m: u32) -> u32 {
    let ms = m - skip;
    let s2 = add_mod(skip, skip, ms);
    let ms2 = m - s2;
    let s4 = add_mod(s2, s2, ms2);
    let ms4 = m - s4;
    let p0 = *pos;
    let p1 = add_mod(p0, skip, ms);
    let mut c = [p0, p1, add_mod(p0, s2, ms2), add_mod(p1, s2, ms2)];
    loop {
        let taken = u32::from(used[c[0] as usize])
            | u32::from(used[c[1] as usize]) << 8
            | u32::from(used[c[2] as usize]) << 16
            | u32::from(used[c[3] as usize]) << 24;
        let free = !taken & 0x0101_0101;
        if free != 0 {
            let slot = c[(free.trailing_zeros() / 8) as usize & 3];
            used[slot as usize] = 1;
            *pos = add_mod(slot, skip, ms);
            return slot;
        }
        for x in &mut c {
            *x = add_mod(*x, s4, ms4);
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
        let start = (!self.table.is_empty()).then(|| self.slot(req.hash));
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
    if old.table.len() != new.table.len() {
        // Tables of different sizes, or one of them empty.
        return 1.0;
    }
    if old.table.is_empty() {
        return 0.0;
    }
    debug_assert_eq!(old.rank_of.len(), old_backends.len());
    debug_assert_eq!(new.rank_of.len(), new_backends.len());
    // Each address gets one number, the first rank it has in the new table's sorted
    // addresses (the two lists are merged once); an old address the new table lacks gets
    // none. Each slot then compares two numbers instead of two addresses: at 10,000
    // backends 0.30 ms became 0.12 ms (docs/benchmarks.md, Core, "fourth round").
    let (olds, news) = (&old.sorted_addrs, &new.sorted_addrs);
    let mut first = vec![0u32; news.len()];
    for r in 1..news.len() {
        first[r] = if news[r] == news[r - 1] {
            first[r - 1]
        } else {
            r as u32
        };
    }
    let mut in_new = vec![u32::MAX; olds.len()];
    let mut j = 0;
    for (i, a) in olds.iter().enumerate() {
        while j < news.len() && news[j] < *a {
            j += 1;
        }
        if news.get(j) == Some(a) {
            in_new[i] = j as u32;
        }
    }
    // Per backend-slice index (the tables' entries); backends outside a table get numbers
    // that match nothing.
    let old_id: Vec<u32> = old
        .rank_of
        .iter()
        .map(|&r| in_new.get(r as usize).copied().unwrap_or(u32::MAX))
        .collect();
    let new_id: Vec<u32> = new
        .rank_of
        .iter()
        .map(|&r| first.get(r as usize).copied().unwrap_or(u32::MAX - 1))
        .collect();
    let id = |ids: &[u32], i: u32| ids.get(i as usize).copied();
    let moved = old
        .table
        .iter()
        .zip(&new.table)
        .filter(|(&o, &n)| id(&old_id, o).is_none_or(|o| Some(o) != id(&new_id, n)))
        .count();
    moved as f64 / old.table.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::canonical_addr;

    fn pool(n: usize, seed: u64, weights: bool) -> Vec<Backend> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let w = if weights { (x >> 40) % 9 } else { 1 } as u16;
                // Mostly IPv4; some IPv6 and IPv4-mapped IPv6 (written as IPv4), so the
                // text order mixes lengths and kinds.
                let a = match (x >> 33) % 8 {
                    0 => format!("[2001:db8::{:x}]:{}", i + 1, 80 + (x >> 60)),
                    1 => format!(
                        "[::ffff:198.19.{}.{}]:{}",
                        i / 250,
                        i % 250 + 1,
                        80 + (x >> 60)
                    ),
                    _ => format!("198.18.{}.{}:{}", i / 250, i % 250 + 1, 80 + (x >> 60)),
                };
                Backend::new(a.parse().unwrap(), w)
            })
            .collect()
    }

    /// Build time at M = 65537 against the reference in the same run, robust to a loaded
    /// machine: the minimum (and median) of many builds, interleaved. Run with
    /// `cargo test --release -p fulcrum-core --lib maglev_build_time -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement (docs/benchmarks.md), not a check"]
    fn maglev_build_time() {
        let size = PrimeTableSize::DEFAULT;
        for (n, weights) in [(1000usize, true), (1000, false), (10_000, false)] {
            let backends: Vec<Backend> = (0..n)
                .map(|i| {
                    let a = format!("198.18.{}.{}:80", i / 250, i % 250 + 1);
                    let w = if weights { (i % 7 + 1) as u16 } else { 1 };
                    Backend::new(a.parse().unwrap(), w)
                })
                .collect();
            let (mut fast, mut previous, mut reference) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..300 {
                let t = std::time::Instant::now();
                std::hint::black_box(Maglev::new(&backends, size));
                fast.push(t.elapsed());
                let t = std::time::Instant::now();
                std::hint::black_box(populate_one_at_a_time(&backends, size));
                previous.push(t.elapsed());
                let t = std::time::Instant::now();
                std::hint::black_box(populate_reference(&backends, size));
                reference.push(t.elapsed());
            }
            fast.sort();
            previous.sort();
            reference.sort();
            println!(
                "maglev build M=65537 n={n} weights={weights}: min {:?} median {:?}; one probe at a time (the previous build, table only) min {:?} median {:?}; reference (probing only) min {:?} median {:?}; min ratio to previous {:.2}, to reference {:.2}",
                fast[0],
                fast[150],
                previous[0],
                previous[150],
                reference[0],
                reference[150],
                fast[0].as_secs_f64() / previous[0].as_secs_f64(),
                fast[0].as_secs_f64() / reference[0].as_secs_f64()
            );
        }
    }

    /// One backend added to / removed from a 10,000-backend pool at M = 65537: the build
    /// from scratch against the one carried over from the previous table
    /// ([`Maglev::new_after`]), interleaved, min and median of 200 each. Run with
    /// `cargo test --release -p fulcrum-core --lib maglev_change_build_time -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement (docs/benchmarks.md), not a check"]
    fn maglev_change_build_time() {
        let size = PrimeTableSize::DEFAULT;
        let at = |i: usize| format!("198.18.{}.{}:80", i / 250, i % 250 + 1);
        let old: Vec<Backend> = (0..10_000)
            .map(|i| Backend::new(at(i).parse().unwrap(), 1))
            .collect();
        let mut added = old.clone();
        added.push(Backend::new(at(10_000).parse().unwrap(), 1));
        let mut removed = old.clone();
        removed.remove(4321);
        let prev = Maglev::new(&old, size);
        for (what, new) in [("add", &added), ("removal", &removed)] {
            assert_eq!(
                Maglev::new_after(&prev, &old, new, size).table(),
                Maglev::new(new, size).table()
            );
            let (mut fresh, mut carried) = (Vec::new(), Vec::new());
            for _ in 0..200 {
                let t = std::time::Instant::now();
                std::hint::black_box(Maglev::new(new, size));
                fresh.push(t.elapsed());
                let t = std::time::Instant::now();
                std::hint::black_box(Maglev::new_after(&prev, &old, new, size));
                carried.push(t.elapsed());
            }
            fresh.sort();
            carried.sort();
            println!(
                "maglev build after one {what} at 10,000 backends, M=65537: from scratch min {:?} median {:?}; carried over min {:?} median {:?}; min ratio {:.2}",
                fresh[0],
                fresh[100],
                carried[0],
                carried[100],
                carried[0].as_secs_f64() / fresh[0].as_secs_f64()
            );
        }
    }

    /// Where the build after one removal from a 10,000-backend pool goes, part by part
    /// (M = 65537, min and median of 200 each): the whole [`Maglev::new_after`], its
    /// population, its quotas, [`Maglev::from_sorted`] (quotas, population, the lists kept
    /// for the next build) and [`moved_ratio`]. Run with `cargo test --release -p
    /// fulcrum-core --lib maglev_change_build_parts -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn maglev_change_build_parts() {
        let size = PrimeTableSize::DEFAULT;
        let m = size.get();
        let at = |i: usize| format!("198.18.{}.{}:80", i / 250, i % 250 + 1);
        let old: Vec<Backend> = (0..10_000)
            .map(|i| Backend::new(at(i).parse().unwrap(), 1))
            .collect();
        let mut new = old.clone();
        new.remove(4321);
        let prev = Maglev::new(&old, size);
        let sorted = sorted_lanes(&new, m);
        let weights: Vec<u32> = sorted.iter().map(|e| e.weight).collect();
        let quota_of = quotas(&weights, m);
        let (mut whole, mut fill, mut quota, mut finish, mut moved) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..200 {
            let t = std::time::Instant::now();
            std::hint::black_box(Maglev::new_after(&prev, &old, &new, size));
            whole.push(t.elapsed());
            let t = std::time::Instant::now();
            std::hint::black_box(populate(&sorted, &quota_of, m));
            fill.push(t.elapsed());
            let t = std::time::Instant::now();
            std::hint::black_box(quotas(&weights, m));
            quota.push(t.elapsed());
            let t = std::time::Instant::now();
            std::hint::black_box(Maglev::from_sorted(&new, &sorted, m));
            finish.push(t.elapsed());
            let t = std::time::Instant::now();
            std::hint::black_box(moved_ratio(&prev, &old, &prev, &old));
            moved.push(t.elapsed());
        }
        for (n, v) in [
            ("new_after", &mut whole),
            ("populate", &mut fill),
            ("quotas", &mut quota),
            ("from_sorted", &mut finish),
            ("moved", &mut moved),
        ] {
            v.sort();
            println!("{n}: min {:?} median {:?}", v[0], v[100]);
        }
    }

    #[test]
    fn canonical_addr_without_a_string_is_the_same_text_and_order() {
        let addrs: Vec<std::net::SocketAddr> = [
            "0.0.0.0:1",
            "1.2.3.4:80",
            "10.0.0.10:8080",
            "255.255.255.255:65535",
            "198.18.2.1:80",
            "198.18.10.1:80",
            "[::1]:443",
            "[::]:9",
            "[2001:db8::1]:80",
            "[2001:db8:0:0:1:0:0:1]:80",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[::ffff:1.2.3.4]:80",
            "[::1.2.3.4]:80",
            "[fe80::1%7]:80",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for a in &addrs {
            assert_eq!(
                CanonicalAddr::new(a).as_bytes(),
                canonical_addr(a).as_bytes(),
                "{a}"
            );
            for b in &addrs {
                assert_eq!(
                    CanonicalAddr::new(a).cmp(&CanonicalAddr::new(b)),
                    canonical_addr(a)
                        .as_bytes()
                        .cmp(canonical_addr(b).as_bytes()),
                    "{a} {b}"
                );
            }
        }
    }

    /// The selection of the lanes that get one more slot ([`quotas`]) gives the quotas of
    /// the stable sort ([`quotas_sorted`]): equal weights (one remainder), a few distinct
    /// weights (ties among the lanes of each), random weights, and more lanes than slots.
    #[test]
    fn quotas_by_selection_are_the_sorted_ones() {
        let mut x = 7u64;
        let mut next = |r: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % r
        };
        for m in [3u32, 7, 251, 4093, 65_537] {
            for n in [1usize, 2, 3, 10, 100, 300, 1000] {
                for kinds in [1u64, 2, 3, 9, 1000] {
                    let weights: Vec<u32> = (0..n).map(|_| 1 + next(kinds) as u32 * 37).collect();
                    let q = quotas(&weights, m);
                    assert_eq!(q, quotas_sorted(&weights, m), "M = {m}, {weights:?}");
                    assert_eq!(q.iter().sum::<u32>(), m);
                }
            }
        }
        assert_eq!(quotas(&[], 7), quotas_sorted(&[], 7));
    }

    #[test]
    fn inverse_mod_is_the_inverse() {
        for m in [3u32, 7, 251, 65_537, PrimeTableSize::MAX] {
            for a in [1, 2, m / 2, m - 2, m - 1] {
                let inv = inverse_mod(a, m);
                assert!(inv < m);
                assert_eq!(
                    u64::from(a) * u64::from(inv) % u64::from(m),
                    1,
                    "{a} mod {m}"
                );
            }
        }
    }

    #[test]
    fn the_tail_list_gives_the_same_table_as_probing() {
        for (m, n) in [
            (3u32, 1usize),
            (3, 3),
            (7, 5),
            (251, 10),
            (251, 200),
            (4093, 50),
            (65_537, 1),
            (65_537, 100),
            (65_537, 1000),
            (1_000_003, 300),
        ] {
            for (seed, weights) in [(1, false), (2, true), (3, true)] {
                let backends = pool(n, seed, weights);
                let size = PrimeTableSize::new(m).unwrap();
                let fast = Maglev::new(&backends, size);
                let reference = populate_reference(&backends, size);
                assert_eq!(
                    fast.table(),
                    reference.as_slice(),
                    "M = {m}, {n} backends, seed {seed}"
                );
                assert_eq!(
                    populate_one_at_a_time(&backends, size),
                    reference,
                    "M = {m}, {n} backends, seed {seed}, one probe at a time"
                );
            }
        }
    }
}
