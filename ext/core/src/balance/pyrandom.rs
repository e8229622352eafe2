//! Python's `random.Random` (MT19937, `seed(int)`, `random()`, `randrange(n)`, the two-draw
//! `sample(range(n), 2)` and weighted `choices`), draw for draw: a load balancer seeded as the
//! Python one makes the same choices, so the Python implementation stays the reference.

const N: usize = 624;
const M: usize = 397;

/// MT19937 as CPython's `_randommodule.c` runs it.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed (CPython's `init_by_array` over
    /// the seed's 32-bit words, least significant first).
    pub fn new(seed: u128) -> Self {
        let mut r = PyRandom {
            mt: [0; N],
            index: N,
        };
        r.seed(seed);
        r
    }

    /// Seeded from the system's randomness (`random.Random()` without a seed).
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut words = 0u128;
        for i in 0..2u64 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                h.write_u128(t.as_nanos());
            }
            words = (words << 64) | u128::from(h.finish());
        }
        Self::new(words)
    }

    pub fn seed(&mut self, seed: u128) {
        let mut key: Vec<u32> = Vec::new();
        let mut s = seed;
        while s != 0 {
            key.push(s as u32);
            s >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        self.init_genrand(19_650_218);
        let mut i = 1usize;
        let mut j = 0usize;
        let mt = &mut self.mt;
        for _ in 0..N.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        self.index = N;
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mut v = self.mt[(k + M) % N] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[k] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random()`: 53 random bits in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)`, for k up to 64.
    fn getrandbits(&mut self, k: u32) -> u64 {
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        (hi << 32) | lo
    }

    /// `randrange(n)` (`_randbelow_with_getrandbits`); 0 when n is 0.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), 2)` for n >= 2.
    pub fn sample2(&mut self, n: usize) -> (usize, usize) {
        let n64 = n as u64;
        if n <= 21 {
            // CPython's pool selection: the drawn slot takes the pool's last element.
            let a = self.randbelow(n64) as usize;
            let j = self.randbelow(n64 - 1) as usize;
            (a, if j == a { n - 1 } else { j })
        } else {
            let a = self.randbelow(n64) as usize;
            loop {
                let b = self.randbelow(n64) as usize;
                if b != a {
                    return (a, b);
                }
            }
        }
    }

    /// `choices(range(len(weights)), weights=weights)[0]`.
    pub fn weighted(&mut self, weights: impl Iterator<Item = u64> + Clone) -> usize {
        let total: u64 = weights.clone().sum();
        let x = self.random() * total as f64;
        let n = weights.clone().count();
        // bisect_right(cum_weights, x, 0, n - 1)
        let mut acc = 0u64;
        for (i, w) in weights.enumerate() {
            if i == n - 1 {
                return i;
            }
            acc += w;
            if x < acc as f64 {
                return i;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    #[test]
    fn matches_cpython() {
        // python3 -c "import random; r=random.Random(17); print([r.randrange(100) for _ in range(5)], r.random())"
        let mut r = PyRandom::new(17);
        let v: Vec<u64> = (0..5).map(|_| r.randbelow(100)).collect();
        assert_eq!(v, vec![66, 53, 38, 46, 37]);
        assert!((r.random() - 0.174_688_292_787_279_38).abs() < 1e-17);
        // python3 -c "import random; r=random.Random(2**40+5); print(r.sample(range(5),2),
        //   r.sample(range(30),2), r.choices(range(3),weights=[3,1,2])[0], r.uniform(0,100),
        //   r.randrange(7))"
        let mut r = PyRandom::new((1 << 40) + 5);
        assert_eq!(r.sample2(5), (4, 2));
        assert_eq!(r.sample2(30), (21, 29));
        assert_eq!(r.weighted([3u64, 1, 2].into_iter()), 0);
        assert!((100.0 * r.random() - 75.844_124_568_972_23).abs() < 1e-12);
        assert_eq!(r.randbelow(7), 6);
    }
}
