//! Open connections, counted overall and per address, for the API and the SIP stream
//! listeners: a few clients that open connections and stall cannot hold every slot. An IPv6
//! /64 counts as one address, as it does for the SIP rate limit and the failed-authentication
//! throttle (`sip::rate_limit::source_key`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sip::rate_limit::source_key;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLimits {
    pub total: usize,
    pub per_address: usize,
}

/// The open connections; a slot is freed when its guard drops.
pub struct Slots {
    limits: SlotLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place.
pub struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

/// Whether a connection from an address is held to the per-address cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerAddress {
    Capped,
    /// A trusted PBX or SBC, which carries many callers' connections: only the total applies.
    Exempt,
}

impl Slots {
    pub fn new(limits: SlotLimits) -> Arc<Slots> {
        Arc::new(Slots { limits, open: Mutex::new((0, HashMap::new())) })
    }

    /// A slot for a connection from `ip`, or None when the total or its address's share is used up.
    pub fn take(self: &Arc<Self>, ip: IpAddr, cap: PerAddress) -> Option<Slot> {
        let key = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        let here = per.entry(key).or_default();
        if *total >= self.limits.total || (cap == PerAddress::Capped && *here >= self.limits.per_address) {
            if *here == 0 {
                per.remove(&key);
            }
            return None;
        }
        *here += 1;
        *total += 1;
        Some(Slot { slots: self.clone(), key })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *open;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_overall_and_per_address_and_freed_on_drop() {
        let slots = Slots::new(SlotLimits { total: 3, per_address: 2 });
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = slots.take(a, PerAddress::Capped).unwrap();
        let _second = slots.take(a, PerAddress::Capped).unwrap();
        assert!(slots.take(a, PerAddress::Capped).is_none(), "two per address");
        let _third = slots.take(b, PerAddress::Capped).unwrap();
        assert!(slots.take(b, PerAddress::Capped).is_none(), "three in all");
        drop(first);
        assert!(slots.take(b, PerAddress::Capped).is_some(), "a dropped connection frees its slot");
    }

    #[test]
    fn one_ipv6_slash_64_is_one_address() {
        let slots = Slots::new(SlotLimits { total: 10, per_address: 2 });
        let _one = slots.take("2001:db8:1:2::1".parse().unwrap(), PerAddress::Capped).unwrap();
        let _two = slots.take("2001:db8:1:2::2".parse().unwrap(), PerAddress::Capped).unwrap();
        assert!(slots.take("2001:db8:1:2::3".parse().unwrap(), PerAddress::Capped).is_none());
        assert!(slots.take("2001:db8:1:3::1".parse().unwrap(), PerAddress::Capped).is_some());
    }

    #[test]
    fn an_exempt_address_is_held_only_to_the_total() {
        let slots = Slots::new(SlotLimits { total: 3, per_address: 1 });
        let pbx: IpAddr = "10.0.0.5".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slots.take(pbx, PerAddress::Exempt).unwrap()).collect();
        assert!(slots.take(pbx, PerAddress::Exempt).is_none(), "the total still applies");
        assert!(slots.take("192.0.2.9".parse().unwrap(), PerAddress::Capped).is_none());
        drop(held);
        assert_eq!(slots.open.lock().unwrap().1.len(), 0, "nothing left tracked");
    }
}
