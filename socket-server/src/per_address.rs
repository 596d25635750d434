//! Per-address caps of the public port: how many request heads one address may have being read
//! (`SB_HANDSHAKES_PER_IP`) and how many sessions it may hold (`SB_MAX_CONNECTIONS_PER_IP`).
//! An address is counted by itself (IPv4) or its /64 (IPv6), as the rate limits count it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The key an address is counted under: itself (IPv4) or its /64 (IPv6), as the rate limits
/// count it, so rotating addresses inside one subscriber's block does not multiply the cap.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many of something (heads being read, sessions) each address holds, capped. An entry
/// lives only while its address holds one, so the table is never larger than what is held.
pub(crate) struct PerAddress {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One held unit of a [`PerAddress`] count; given back on drop.
pub(crate) struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    /// `cap` 0: no cap (nothing is counted).
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(PerAddress {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or `None` when it already holds `cap`. With no cap, `Some(None)`.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<Option<AddressSlot>> {
        if self.cap == 0 {
            return Some(None);
        }
        let key = address_key(ip);
        let mut held = self.held.lock().expect("per-address table");
        let count = held.entry(key).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            table: self.clone(),
            key,
        }))
    }

    #[cfg(test)]
    fn held_by(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().expect("per-address table");
        held.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().expect("per-address table");
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_capped_counted_per_v6_block_and_given_back() {
        let table = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = table.try_take(a).unwrap();
        let second = table.try_take(a).unwrap();
        assert!(table.try_take(a).is_none(), "a third is refused");
        // Another address has its own share.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(table.try_take(b).is_some());
        drop(first);
        let third = table.try_take(a).expect("a slot given back is free again");
        drop((second, third));
        assert_eq!(table.held_by(a), 0);
        assert!(
            table.held.lock().unwrap().is_empty(),
            "no entry outlives its slots"
        );
        // One /64 is one address.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let _x = table.try_take(v6a).unwrap();
        let _y = table.try_take(v6b).unwrap();
        assert!(table.try_take("2001:db8::3".parse().unwrap()).is_none());
        // No cap: nothing counted.
        let open = PerAddress::new(0);
        for _ in 0..10 {
            assert!(open.try_take(a).unwrap().is_none());
        }
    }
}
