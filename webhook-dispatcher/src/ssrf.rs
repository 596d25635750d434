//! The SSRF guard: a webhook URL is chosen by whoever holds an API key, and the dispatcher
//! runs inside the cluster, so it must not become a way to reach the cluster's own services
//! or a cloud's metadata endpoint.
//!
//! A destination address is refused when it is loopback, link-local (169.254/16, fe80::/10),
//! private (10/8, 172.16/12, 192.168/16), unique-local (fc00::/7), shared (100.64/10),
//! unspecified, reserved, broadcast or multicast, unless it lies in a network of
//! `SB_WEBHOOK_ALLOW_NETS`. IPv4-mapped IPv6 addresses are judged as the IPv4 address they
//! carry. The check runs at registration (every address the host resolves to must pass) and
//! again at every delivery, inside the HTTP client's own resolver ([`GuardedResolver`]), so
//! the address checked is the address connected to: a name that resolved to a public address
//! at registration and to 127.0.0.1 later (DNS rebinding) is refused then. Redirects are never
//! followed and no proxy from the environment is used.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks an operator allowed although they are internal.
#[derive(Debug, Clone, Default)]
pub struct AllowNets(Vec<IpNet>);

impl AllowNets {
    /// Comma-separated networks (`10.1.0.0/16`) or single addresses (`127.0.0.1`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("`{part}` is neither a network nor an address"))?,
            };
            nets.push(net);
        }
        Ok(AllowNets(nets))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Why an address is internal, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else {
                None
            }
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// `Ok` when `ip` may be connected to; otherwise why not.
pub fn check_ip(ip: IpAddr, allow: &AllowNets) -> Result<(), String> {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    match internal_kind(ip) {
        None => Ok(()),
        Some(_) if allow.contains(ip) || mapped.is_some_and(|m| allow.contains(m)) => Ok(()),
        Some(kind) => Err(format!(
            "{ip} is a {kind} address; webhooks may not reach it unless SB_WEBHOOK_ALLOW_NETS allows it"
        )),
    }
}

/// A registrable URL: `http` or `https`, a host, no credentials, and every address the host
/// resolves to allowed. Answers the parsed URL.
pub async fn check_url(url: &str, allow: &AllowNets) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("a webhook URL is http or https".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a webhook URL carries no credentials".into());
    }
    let port = parsed
        .port_or_known_default()
        .ok_or("a webhook URL needs a port")?;
    let addrs: Vec<IpAddr> = match parsed.host() {
        Some(url::Host::Ipv4(v4)) => vec![IpAddr::V4(v4)],
        Some(url::Host::Ipv6(v6)) => vec![IpAddr::V6(v6)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("{name} does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect(),
        None => return Err("a webhook URL needs a host".into()),
    };
    if addrs.is_empty() {
        return Err("the host resolves to no address".into());
    }
    for ip in addrs {
        check_ip(ip, allow)?;
    }
    Ok(parsed)
}

/// The HTTP client's resolver: answers only the allowed addresses of a name, or an error when
/// it has none, so a delivery can only connect to an address that passed the guard.
pub struct GuardedResolver {
    pub allow: AllowNets,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match check_ip(a.ip(), &allow) {
                    Ok(()) => true,
                    Err(why) => {
                        refused = Some(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} resolves to no address"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks an address literal in a URL at delivery time (the resolver only sees names).
pub fn check_literal(url: &reqwest::Url, allow: &AllowNets) -> Result<(), String> {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => check_ip(IpAddr::V4(v4), allow),
        Some(url::Host::Ipv6(v6)) => check_ip(IpAddr::V6(v6), allow),
        _ => Ok(()),
    }
}

/// The delivery client: the guarded resolver, no redirects, no proxies, rustls, bounded
/// timeouts.
pub fn client(
    allow: &AllowNets,
    timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .dns_resolver(Arc::new(GuardedResolver {
            allow: allow.clone(),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(8)
        .user_agent(concat!("switchboard-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let none = AllowNets::default();
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(check_ip(ip(refused), &none).is_err(), "{refused}");
        }
        for public in ["93.184.216.34", "172.32.0.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(check_ip(ip(public), &none).is_ok(), "{public}");
        }
        let allow = AllowNets::parse("127.0.0.1, 10.1.0.0/16").unwrap();
        assert!(check_ip(ip("127.0.0.1"), &allow).is_ok());
        assert!(check_ip(ip("::ffff:127.0.0.1"), &allow).is_ok());
        assert!(check_ip(ip("127.0.0.2"), &allow).is_err());
        assert!(check_ip(ip("10.1.200.3"), &allow).is_ok());
        assert!(check_ip(ip("10.2.0.1"), &allow).is_err());
        assert!(AllowNets::parse("10.0.0.0/33").is_err());
        assert!(AllowNets::parse("nope").is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_by_scheme_credentials_and_every_address() {
        let none = AllowNets::default();
        assert!(check_url("ftp://example.com/", &none).await.is_err());
        assert!(check_url("http://u:p@93.184.216.34/", &none).await.is_err());
        assert!(check_url("http://93.184.216.34/hook", &none).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", &none).await.is_err());
        assert!(check_url("http://localhost:9/hook", &none).await.is_err());
        assert!(check_url("http://[::1]:9/hook", &none).await.is_err());
        let allow = AllowNets::parse("127.0.0.1/32,::1/128").unwrap();
        assert!(check_url("http://localhost:9/hook", &allow).await.is_ok());
    }

    /// The resolver a delivery connects through drops refused addresses, and fails when none
    /// is left: a name rebound to loopback after registration cannot be reached.
    #[tokio::test]
    async fn the_delivery_resolver_refuses_internal_names() {
        use reqwest::dns::Resolve;
        let guarded = GuardedResolver {
            allow: AllowNets::default(),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(guarded.resolve(name).await.is_err());
        let allowed = GuardedResolver {
            allow: AllowNets::parse("127.0.0.0/8").unwrap(),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = allowed.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }
}
