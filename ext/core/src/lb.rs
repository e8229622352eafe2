//! Load-balancer tables: the stable 64-bit host hash (BLAKE2b with an 8-byte digest, read
//! little-endian, so that hash stickiness survives restarts and matches every process), the
//! ring hash ring (Ketama-style, each host's points in proportion to its weight) and the Maglev
//! lookup table (Eisenbud et al. 2016, weighted as Envoy does it).

const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

#[allow(clippy::many_single_char_names)]
fn g(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize, x: u64, y: u64) {
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
    let mut m = [0u64; 16];
    for (i, word) in m.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&block[i * 8..i * 8 + 8]);
        *word = u64::from_le_bytes(b);
    }
    let mut v = [0u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= t as u64;
    v[13] ^= (t >> 64) as u64;
    if last {
        v[14] = !v[14];
    }
    for r in 0..12 {
        let s = &SIGMA[r % 10];
        g(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
        g(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
        g(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
        g(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
        g(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
        g(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
        g(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
        g(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/// BLAKE2b (RFC 7693) with an 8-byte digest and no key, the digest read little-endian.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = IV;
    h[0] ^= 0x0101_0000 ^ 8;
    let mut t: u128 = 0;
    let mut rest = data;
    while rest.len() > 128 {
        let mut block = [0u8; 128];
        block.copy_from_slice(&rest[..128]);
        t += 128;
        compress(&mut h, &block, t, false);
        rest = &rest[128..];
    }
    let mut block = [0u8; 128];
    block[..rest.len()].copy_from_slice(rest);
    t += rest.len() as u128;
    compress(&mut h, &block, t, true);
    h[0]
}

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    NoHosts,
    ZeroWeight,
    /// Maglev needs a table of at least 2 entries (its skip is taken modulo size - 1).
    TableSize,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoHosts => "no hosts",
            Self::ZeroWeight => "every host has weight 0",
            Self::TableSize => "the Maglev table needs at least 2 entries",
        })
    }
}

/// `(numerator / denominator)` rounded half to even, as Python's `round(a / b)` (exact while the
/// numerator stays below 2**53, which ring sizes and endpoint weights do).
fn round_ratio(numerator: u128, denominator: u128) -> u128 {
    ((numerator as f64) / (denominator as f64)).round_ties_even() as u128
}

/// The ring of `hosts` (`(key, weight)`, key the host's `address:port`) for a ring of about
/// `size` points: the points' hashes ascending and, beside each, the index of its host. Each
/// host gets `max(1, round(size * weight / total))` points, hashed from `key + "_" + i`.
pub fn ring(hosts: &[(&str, u64)], size: u64) -> Result<(Vec<u64>, Vec<u32>), TableError> {
    if hosts.is_empty() {
        return Err(TableError::NoHosts);
    }
    let total: u128 = hosts.iter().map(|(_, w)| u128::from(*w)).sum();
    if total == 0 {
        return Err(TableError::ZeroWeight);
    }
    let mut points: Vec<(u64, u32)> = Vec::new();
    let mut key = Vec::new();
    for (idx, (host, weight)) in hosts.iter().enumerate() {
        let n = round_ratio(u128::from(size) * u128::from(*weight), total).max(1);
        for i in 0..n {
            key.clear();
            key.extend_from_slice(host.as_bytes());
            key.push(b'_');
            key.extend_from_slice(i.to_string().as_bytes());
            points.push((hash64(&key), idx as u32));
        }
    }
    points.sort_by_key(|p| p.0); // stable: equal hashes keep host order
    Ok(points.into_iter().unzip())
}

/// The host owning `hash` on a ring from [`ring`]: the first point at or after it, wrapping.
pub fn ring_pick(hashes: &[u64], hash: u64) -> Option<usize> {
    if hashes.is_empty() {
        return None;
    }
    Some(hashes.partition_point(|h| *h < hash) % hashes.len())
}

/// Maglev's lookup table of `size` entries (host indices) for `hosts` (`(key, weight)`): each
/// host's offset is `hash64(key) % size` and skip `hash64(key + "#skip") % (size - 1) + 1`; a
/// host takes a turn only while its weighted share (weight / largest weight) is not yet used.
pub fn maglev(hosts: &[(&str, u64)], size: u64) -> Result<Vec<u32>, TableError> {
    if hosts.is_empty() {
        return Err(TableError::NoHosts);
    }
    if size < 2 {
        return Err(TableError::TableSize);
    }
    let max_w = hosts.iter().map(|(_, w)| *w).max().unwrap_or(0);
    if max_w == 0 {
        return Err(TableError::ZeroWeight);
    }
    let mut offsets = Vec::with_capacity(hosts.len());
    let mut skips = Vec::with_capacity(hosts.len());
    for (host, _) in hosts {
        offsets.push(hash64(host.as_bytes()) % size);
        let skip_key = [host.as_bytes(), b"#skip"].concat();
        skips.push(hash64(&skip_key) % (size - 1) + 1);
    }
    let len = usize::try_from(size).map_err(|_| TableError::TableSize)?;
    let mut table: Vec<Option<u32>> = vec![None; len];
    let mut nexts = vec![0u64; hosts.len()];
    let mut credit = vec![0.0f64; hosts.len()];
    let mut filled = 0usize;
    loop {
        for i in 0..hosts.len() {
            credit[i] += hosts[i].1 as f64 / max_w as f64;
            if credit[i] < 1.0 {
                continue;
            }
            credit[i] -= 1.0;
            let mut c = ((offsets[i] + (nexts[i] % size) * skips[i]) % size) as usize;
            while table[c].is_some() {
                nexts[i] += 1;
                c = ((offsets[i] + (nexts[i] % size) * skips[i]) % size) as usize;
            }
            table[c] = Some(i as u32);
            nexts[i] += 1;
            filled += 1;
            if filled == len {
                return Ok(table.into_iter().map(|x| x.unwrap_or(0)).collect());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2b_64_known_values() {
        // hashlib.blake2b(b"", digest_size=8) and (b"abc", ...), read little-endian.
        assert_eq!(
            hash64(b"").to_le_bytes(),
            [0xe4, 0xa6, 0xa0, 0x57, 0x74, 0x79, 0xb2, 0xb4]
        );
        assert_eq!(
            hash64(b"abc").to_le_bytes(),
            [0xd8, 0xbb, 0x14, 0xd8, 0x33, 0xd5, 0x95, 0x59]
        );
        let long = vec![7u8; 300];
        assert_ne!(hash64(&long), hash64(&long[..299]));
    }

    #[test]
    fn ring_and_maglev_cover_every_host_by_weight() {
        let hosts = [("10.0.0.1:80", 1), ("10.0.0.2:80", 3)];
        let (hashes, owners) = ring(&hosts, 64).expect("ring");
        assert_eq!(hashes.len(), 64);
        assert_eq!(owners.iter().filter(|o| **o == 1).count(), 48);
        assert!(hashes.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ring_pick(&hashes, 0), Some(0));
        assert_eq!(ring_pick(&hashes, hashes[5]), Some(5));
        let table = maglev(&hosts, 101).expect("maglev");
        assert_eq!(table.len(), 101);
        let ones = table.iter().filter(|o| **o == 1).count();
        assert!((70..=80).contains(&ones), "{ones}");
        assert_eq!(maglev(&hosts, 1), Err(TableError::TableSize));
        assert_eq!(ring(&[], 8), Err(TableError::NoHosts));
    }
}
