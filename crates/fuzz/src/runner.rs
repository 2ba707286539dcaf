//! The stable-Rust runner: replays a target's seed corpus (`fuzz/corpus/NAME`), then feeds
//! it inputs mutated from that corpus (bit flips, byte edits, insertions and deletions,
//! block copies, splices, the target's dictionary `fuzz/dict/NAME.dict`) until a time and
//! count bound, from a seed it prints so that a failure reproduces. No coverage feedback:
//! that is libFuzzer's part (docs/fuzzing.md); this one needs nothing but `cargo test`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// A target's seed corpus, in name order.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{err}"));
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    v.sort();
    v
}

/// A libFuzzer dictionary (`"token"` or `name="token"` lines, `\xNN`, `\\` and `\"`
/// escapes); none if the file is missing.
pub fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let path = fuzz_dir().join("dict").join(format!("{target}.dict"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let q = l.find('"')?;
            let body = l[q + 1..].strip_suffix('"')?;
            let (mut out, b) = (Vec::new(), body.as_bytes());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    if b[i + 1] == b'x' && i + 3 < b.len() {
                        let hex = std::str::from_utf8(&b[i + 2..i + 4]).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 4;
                    } else {
                        out.push(b[i + 1]);
                        i += 2;
                    }
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            Some(out)
        })
        .collect()
}

/// xorshift64*: small, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Interesting byte values: boundaries and the bytes parsers decide on.
const BYTES: &[u8] = b"\0\x01\x7f\x80\xff\r\n\t ;:,=\"\\0123456789aAfFzZ[]{}";

/// Mutates `v` in place with 1 to 4 stacked edits; `pool` gives splice partners.
pub fn mutate(rng: &mut Rng, v: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[Vec<u8>], max: usize) {
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, BYTES[rng.below(BYTES.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // copy a block elsewhere (duplicated fields, repeated chunks)
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let block = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, block);
            }
            5 | 6 if !dict.is_empty() => {
                let t = &dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || len == 0 {
                    v.splice(at..at, t.iter().copied());
                } else {
                    let end = (at + t.len()).min(len);
                    v.splice(at..end, t.iter().copied());
                }
            }
            7 if !pool.is_empty() => {
                // splice: our head, another input's tail
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                v.truncate(rng.below(len));
            }
            _ if len > 0 => {
                // a digit string changed: lengths, sizes, ports
                let i = rng.below(len);
                if v[i].is_ascii_digit() || v[i].is_ascii_hexdigit() {
                    v[i] = b"0123456789abcdef"[rng.below(16)];
                } else {
                    v[i] = v[i].wrapping_add(1 + rng.below(3) as u8);
                }
            }
            _ => v.push(BYTES[rng.below(BYTES.len())]),
        }
    }
    v.truncate(max);
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub execs: u64,
    pub elapsed: Duration,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Where a failing input is written (under the workspace's target directory).
fn save_crash(target: &str, seed: u64, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{seed:x}-{:x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn one(target: &str, f: crate::Target, seed: u64, input: &[u8]) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        let path = save_crash(target, seed, input);
        eprintln!(
            "fuzz target {target} failed (seed {seed:#x}) on {} bytes, saved to {}:\n{:?}",
            input.len(),
            path.display(),
            String::from_utf8_lossy(input)
        );
        std::panic::resume_unwind(p);
    }
}

/// Replays `target`'s corpus, then runs mutated inputs for `time` or `max_execs`, whichever
/// comes first. Panics (after saving the input) when the target does.
pub fn run(target: &str, f: crate::Target, time: Duration, max_execs: u64, seed: u64) -> Stats {
    let start = Instant::now();
    let corpus = corpus(target);
    assert!(!corpus.is_empty(), "target {target} has no seed corpus");
    let dict = dictionary(target);
    let mut execs = 0;
    for (_, input) in &corpus {
        one(target, f, seed, input);
        execs += 1;
    }
    let pool: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let mut rng = Rng::new(seed ^ fnv(target.as_bytes()));
    let max = pool.iter().map(Vec::len).max().unwrap_or(0).max(64) * 2;
    while execs < max_execs && start.elapsed() < time {
        let mut v = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &mut v, &pool, &dict, max);
        one(target, f, seed, &v);
        execs += 1;
    }
    Stats {
        execs,
        elapsed: start.elapsed(),
    }
}
