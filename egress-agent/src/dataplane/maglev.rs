//! Maglev lookup tables (Eisenbud et al., NSDI 2016) for DestinationRule
//! `consistentHash: {useSourceIp: true}` (issue 12, groundwork: built and
//! tested here, not yet written to the kernel).
//!
//! A table of `M` slots (M prime) is filled from each backend's own
//! permutation of the slots, taking turns; a client's address hashed modulo M
//! picks a slot, the slot names the backend. The table is a pure function of
//! the backend set (sorted by name, hashed with fixed keys), so every node
//! builds the same one and a pod keeps its endpoint across restarts and
//! nodes; removing a backend moves little more than the clients it had.
//! Weights give a backend that many turns per round.

/// FNV-1a, 64 bits, with a seed folded in first (two independent hashes).
fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix: FNV's low bits are weak for short keys.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A backend of the table: its name (e.g. `198.18.0.11:8080`) and weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub weight: u32,
}

/// Builds the table of `size` slots (a prime larger than the number of
/// backends; each slot holds an index into `members` as sorted by name).
/// Returns the members in that order and the table; empty when there are no
/// members or all weights are 0.
pub fn table(members: &[Member], size: u32) -> (Vec<Member>, Vec<u32>) {
    let mut sorted: Vec<Member> = members.iter().filter(|m| m.weight > 0).cloned().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    if sorted.is_empty() || size < 2 {
        return (sorted, Vec::new());
    }
    let m = u64::from(size);
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = fnv64(0x6d61_676c_6576, b.name.as_bytes()) % m;
            let skip = fnv64(0x736b_6970, b.name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut entry = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, b) in sorted.iter().enumerate() {
            for _ in 0..b.weight {
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m;
                while entry[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                entry[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    (sorted, entry)
}

/// The slot of a client address.
pub fn slot(client: &std::net::IpAddr, size: u32) -> u32 {
    let bytes = match client {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    (fnv64(0x6372_6320, &bytes) % u64::from(size)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const M: u32 = 1021;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("198.18.{}.{}:8080", i / 200, 10 + i % 200),
                weight: 1,
            })
            .collect()
    }

    fn pick(members: &[Member], client: IpAddr) -> String {
        let (sorted, t) = table(members, M);
        sorted[t[slot(&client, M) as usize] as usize].name.clone()
    }

    #[test]
    fn every_slot_is_filled_evenly() {
        let (sorted, t) = table(&members(10), M);
        assert_eq!(t.len(), M as usize);
        let mut count = vec![0usize; sorted.len()];
        for &i in &t {
            count[i as usize] += 1;
        }
        // Maglev's balance: each within a few slots of M/N.
        for c in count {
            assert!((100..=105).contains(&c), "{c}");
        }
    }

    #[test]
    fn the_same_client_and_set_give_the_same_backend_whatever_the_order() {
        let set = members(7);
        let mut reversed = set.clone();
        reversed.reverse();
        for i in 0..200u32 {
            let client = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]);
            assert_eq!(pick(&set, client), pick(&reversed, client));
        }
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_own_clients() {
        let set = members(10);
        let (a, before) = table(&set, M);
        let gone = a[3].name.clone();
        let less: Vec<Member> = set.iter().filter(|m| m.name != gone).cloned().collect();
        let (b, after) = table(&less, M);
        let mut own = 0;
        let mut others_moved = 0;
        for s in 0..M as usize {
            let was = &a[before[s] as usize].name;
            let now = &b[after[s] as usize].name;
            if *was == gone {
                own += 1;
            } else if was != now {
                others_moved += 1;
            }
        }
        assert!((100..=105).contains(&own), "{own}");
        // Maglev moves a few percent besides the removed backend's slots.
        assert!(others_moved * 100 < M as usize * 6, "{others_moved} of {M}");
    }

    #[test]
    fn weights_give_slots_in_proportion_and_zero_removes() {
        let set = vec![
            Member {
                name: "a:1".into(),
                weight: 3,
            },
            Member {
                name: "b:1".into(),
                weight: 1,
            },
            Member {
                name: "c:1".into(),
                weight: 0,
            },
        ];
        let (sorted, t) = table(&set, M);
        assert_eq!(sorted.len(), 2, "weight 0 is no backend");
        let a = t
            .iter()
            .filter(|&&i| sorted[i as usize].name == "a:1")
            .count();
        // 3 : 1 of 1021 slots.
        assert!((760..=772).contains(&a), "{a}");
        assert!(table(&[], M).1.is_empty());
    }
}
