//! Per-client-address abuse limits: who is asking ([`client_ip`]), a token bucket per address
//! ([`IpRateLimiter`]) and a cap on things an address holds for a while ([`IpLeases`], e.g.
//! the registry's slot reservations).
//!
//! Limits are per process: with `n` replicas behind a balancer an address gets up to `n`
//! times the configured rate, which is documented next to each setting. State is bounded:
//! at most [`MAX_TRACKED`] addresses; idle ones are forgotten first, and when every tracked
//! address is busy a new one is refused rather than letting the table grow.
//!
//! IPv6 addresses are limited per /64, the block one subscriber usually gets, so rotating
//! addresses inside it does not multiply the limit.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use switchboard_config::tables::common::DEFAULT_TRUSTED_PROXIES;

/// Addresses one limiter tracks at most.
pub const MAX_TRACKED: usize = 100_000;

/// The key an address is limited under: itself (IPv4) or its /64 (IPv6).
fn limit_key(ip: IpAddr) -> IpAddr {
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

/// The proxies allowed to tell us a client's address (`X-Forwarded-For`): an explicit list of
/// networks (`SB_TRUSTED_PROXIES`), the same list nginx's `set_real_ip_from` names. The
/// default is loopback and the private ranges, where a deployment's own proxies (nginx, a
/// load balancer, a TLS terminator) usually live; a deployment should name exactly its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// A comma-separated list of networks (`10.0.0.0/8`) or single addresses; empty trusts
    /// nobody.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<ipnet::IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| {
                        format!("{item:?} is neither a network (10.0.0.0/8) nor an address")
                    })?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4 one) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies::parse(DEFAULT_TRUSTED_PROXIES).expect("the default list parses")
    }
}

/// The asking client's address (see [`client_ip_behind`]).
pub fn client_ip(req: &HttpRequest, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    Some(client_ip_behind(peer, forwarded, trusted))
}

/// The asking client's address from the TCP peer and the `X-Forwarded-For` header values: the
/// peer, unless it is a trusted proxy; then the hops are walked from the last one back, past
/// every trusted proxy (a TLS terminator in front of nginx, say), to the first address that is
/// not one. Whatever stands before that is the client's own claim and is never believed.
pub fn client_ip_behind<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    client
}

/// A rate: `per_sec` on average, `burst` at once. `per_sec == 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client address.
pub struct IpRateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl IpRateLimiter {
    pub fn new(rate: Rate) -> Self {
        IpRateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; `false` when it has none left (answer 429).
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate.per_sec <= 0.0 {
            return true;
        }
        let key = limit_key(ip);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
            // Forget every address whose bucket has refilled: it is no different from new.
            let full_after = self.rate.burst / self.rate.per_sec;
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < full_after);
            if buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// At most `cap` unexpired leases per client address (each lives `ttl`).
pub struct IpLeases {
    cap: usize,
    ttl: Duration,
    leases: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl IpLeases {
    /// `cap == 0` turns the limit off.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        IpLeases {
            cap,
            ttl,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a lease for `ip`; `false` when it already holds `cap` unexpired ones.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.cap == 0 {
            return true;
        }
        let key = limit_key(ip);
        let mut leases = self.leases.lock().expect("leases lock");
        if leases.len() >= MAX_TRACKED && !leases.contains_key(&key) {
            leases.retain(|_, held| held.back().is_some_and(|last| *last > now));
            if leases.len() >= MAX_TRACKED {
                return false;
            }
        }
        let held = leases.entry(key).or_default();
        while held.front().is_some_and(|expiry| *expiry <= now) {
            held.pop_front();
        }
        if held.len() >= self.cap {
            return false;
        }
        held.push_back(now + self.ttl);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = IpRateLimiter::new(Rate {
            per_sec: 10.0,
            burst: 5.0,
        });
        let t0 = Instant::now();
        let allowed = (0..20)
            .filter(|_| limiter.allow(ip("203.0.113.7"), t0))
            .count();
        assert_eq!(allowed, 5);
        // Another address has its own bucket.
        assert!(limiter.allow(ip("203.0.113.8"), t0));
        // 100 ms later one more token has come back.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.allow(ip("203.0.113.7"), t1));
        assert!(!limiter.allow(ip("203.0.113.7"), t1));
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let limiter = IpRateLimiter::new(Rate {
            per_sec: 1.0,
            burst: 1.0,
        });
        let t0 = Instant::now();
        assert!(limiter.allow(ip("2001:db8:1:2::1"), t0));
        assert!(!limiter.allow(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(limiter.allow(ip("2001:db8:1:3::1"), t0));
    }

    #[test]
    fn a_zero_rate_or_cap_is_off() {
        let limiter = IpRateLimiter::new(Rate {
            per_sec: 0.0,
            burst: 0.0,
        });
        let leases = IpLeases::new(0, Duration::from_secs(1));
        let now = Instant::now();
        assert!((0..1000).all(|_| limiter.allow(ip("198.51.100.1"), now)));
        assert!((0..1000).all(|_| leases.try_take(ip("198.51.100.1"), now)));
    }

    #[test]
    fn leases_are_capped_until_they_expire() {
        let leases = IpLeases::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            (0..10)
                .filter(|_| leases.try_take(ip("192.0.2.1"), t0))
                .count(),
            3
        );
        assert!(leases.try_take(ip("192.0.2.2"), t0));
        assert!(!leases.try_take(ip("192.0.2.1"), t0 + Duration::from_secs(9)));
        assert!(leases.try_take(ip("192.0.2.1"), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = TrustedProxies::default();
        // nginx on loopback appended the address it saw; the client's own claim is ignored.
        let via_proxy = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.2.3.4, 203.0.113.9"))
            .to_http_request();
        assert_eq!(client_ip(&via_proxy, &trusted), Some(ip("203.0.113.9")));
        // A client on the internet cannot claim another address.
        let direct = TestRequest::default()
            .peer_addr("198.51.100.7:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "127.0.0.1"))
            .to_http_request();
        assert_eq!(client_ip(&direct, &trusted), Some(ip("198.51.100.7")));
        // A local client without a proxy is itself.
        let local = TestRequest::default()
            .peer_addr("127.0.0.2:5000".parse().unwrap())
            .to_http_request();
        assert_eq!(client_ip(&local, &trusted), Some(ip("127.0.0.2")));
    }

    /// Behind a TLS terminator in front of nginx every client used to be the terminator's one
    /// address (only the last hop was believed); the walk now passes every trusted proxy.
    #[test]
    fn every_trusted_proxy_is_walked_past_and_nothing_else() {
        let trusted = TrustedProxies::parse("127.0.0.0/8, 10.0.0.0/8, ::1").unwrap();
        let hops = |peer: &str, header: &str| {
            client_ip_behind(ip(peer), std::iter::once(header), &trusted)
        };
        // client → TLS proxy 10.0.0.7 → nginx 127.0.0.1 → service.
        assert_eq!(
            hops("127.0.0.1", "203.0.113.9, 10.0.0.7"),
            ip("203.0.113.9")
        );
        // A claim before the first untrusted hop is never believed.
        assert_eq!(
            hops("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.0.0.7"),
            ip("203.0.113.9")
        );
        // Garbage the client wrote is skipped, not a reason to give up.
        assert_eq!(
            hops("127.0.0.1", "not-an-ip, 203.0.113.9"),
            ip("203.0.113.9")
        );
        // Only proxies all along: the farthest one.
        assert_eq!(hops("127.0.0.1", "10.0.0.9, 10.0.0.7"), ip("10.0.0.9"));
        // 192.168/16 is private but not listed: not trusted.
        assert_eq!(hops("192.168.1.1", "203.0.113.9"), ip("192.168.1.1"));
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert_eq!(hops("::ffff:127.0.0.1", "203.0.113.9"), ip("203.0.113.9"));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty(), "nobody");
        assert_eq!(hops("10.0.0.1", "203.0.113.9"), ip("203.0.113.9"));
        let nobody = TrustedProxies::parse("").unwrap();
        assert_eq!(
            client_ip_behind(ip("127.0.0.1"), std::iter::once("203.0.113.9"), &nobody),
            ip("127.0.0.1")
        );
    }
}
