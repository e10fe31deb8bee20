//! Time-ordered (version 7) UUIDs without a system call per id.
//!
//! `uuid::Uuid::now_v7` asks the kernel for randomness on every call, which
//! showed up in capture profiles. Here each thread seeds a generator once;
//! within one millisecond the 74 bits after the timestamp count up from a
//! random start, so ids of one backend are strictly increasing (RFC 9562,
//! method 1) and new events append to the primary key index.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// (last millisecond, counter within it, xorshift state)
    static STATE: Cell<(u64, u128, u64)> = const { Cell::new((0, 0, 0)) };
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // One read per thread; fall back to the clock if the kernel says no.
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64).to_le_bytes();
    }
    u64::from_le_bytes(b) | 1
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The next v7 uuid of this thread, as bytes.
pub fn next_v7() -> [u8; 16] {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let (last, counter, mut rng) = STATE.with(|s| s.get());
    if rng == 0 {
        rng = seed();
    }
    const MASK74: u128 = (1 << 74) - 1;
    let (ms, counter) = if now_ms > last {
        // A new millisecond: start the counter at a random point in the
        // lower half, so it has room to count up.
        let start = ((xorshift(&mut rng) as u128) << 9 ^ xorshift(&mut rng) as u128) & (MASK74 >> 1);
        (now_ms, start)
    } else {
        // Same (or an earlier, if the clock stepped back) millisecond: count on.
        let next = (counter + 1) & MASK74;
        if next == 0 {
            (last + 1, 0)
        } else {
            (last, next)
        }
    };
    STATE.with(|s| s.set((ms, counter, rng)));
    let rand_a = (counter >> 62) as u16 & 0x0fff;
    let rand_b = (counter as u64) & ((1 << 62) - 1);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..8].copy_from_slice(&(0x7000 | rand_a).to_be_bytes());
    b[8..].copy_from_slice(&((0b10u64 << 62) | rand_b).to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_variant_and_order() {
        let ids: Vec<[u8; 16]> = (0..10_000).map(|_| next_v7()).collect();
        for id in &ids {
            assert_eq!(id[6] >> 4, 7, "version 7");
            assert_eq!(id[8] >> 6, 0b10, "RFC 9562 variant");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing within a thread");
        let ms = u64::from_be_bytes([0, 0, ids[0][0], ids[0][1], ids[0][2], ids[0][3], ids[0][4], ids[0][5]]);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now - ms < 10_000, "the timestamp is now");
    }

    #[test]
    fn threads_do_not_collide() {
        let handles: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..5000).map(|_| next_v7()).collect::<Vec<_>>())).collect();
        let mut all: Vec<[u8; 16]> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
