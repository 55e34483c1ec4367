//! Keeping webhooks out of private networks: a webhook URL is chosen by whoever configures it,
//! and without this check it could make hyfleet probe hosts that only it can reach.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Loopback, private, link-local, shared (CGNAT), unspecified, multicast, benchmarking and
/// documentation-only addresses, and IPv6 forms that carry an IPv4 address or tunnel to one:
/// none of them is a public webhook receiver.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let seg = v6.segments();
            let first = seg[0];
            // 6to4 (2002::/16) routes to the IPv4 address in its next 32 bits.
            if first == 0x2002 {
                let [a, b] = seg[1].to_be_bytes();
                let [c, d] = seg[2].to_be_bytes();
                return is_private_v4(Ipv4Addr::new(a, b, c, d));
            }
            // Only 2000::/3 is global unicast (RFC 4291). Outside it lie loopback, the
            // unspecified address, IPv4-compatible ::a.b.c.d and IPv4-translated
            // ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, discard-only 100::/64,
            // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast.
            (first & 0xe000) != 0x2000
                || (first == 0x2001 && seg[1] == 0x0db8) // documentation 2001:db8::/32
                || (first == 0x3fff && seg[1] < 0x1000) // documentation 3fff::/20
                // Teredo 2001::/32 hides its IPv4 end (obfuscated); ORCHID 2001:10::/28 and
                // 2001:20::/28 are identifiers, not routes.
                || (first == 0x2001 && (seg[1] == 0 || (seg[1] & 0xfff0) == 0x0010 || (seg[1] & 0xfff0) == 0x0020))
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 88 && ip.octets()[2] == 99) // 6to4 relay anycast (deprecated)
        || a >= 240
}

/// The address of a URL host written as one (`10.0.0.1`, `[::1]`).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlRefused {
    #[error("is not an http(s) URL with a host")]
    Malformed,
    #[error(
        "points into a private, loopback or link-local network ({0}); set notify.allow_private_networks to allow it"
    )]
    Private(IpAddr),
    #[error("host does not resolve")]
    Unresolved,
}

/// Checks a webhook URL at configuration and at creation: its host must be, or resolve only
/// to, public addresses unless private networks are allowed.
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), UrlRefused> {
    let u = reqwest::Url::parse(url).map_err(|_| UrlRefused::Malformed)?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(UrlRefused::Malformed);
    }
    let port = u.port_or_known_default().ok_or(UrlRefused::Malformed)?;
    let host = u.host_str().ok_or(UrlRefused::Malformed)?;
    let addrs: Vec<IpAddr> = match literal_ip(host) {
        Some(ip) => vec![ip],
        None if allow_private => return Ok(()),
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| UrlRefused::Unresolved)?
            .map(|sa| sa.ip())
            .collect(),
    };
    if allow_private {
        return Ok(());
    }
    match addrs.into_iter().find(|ip| is_private(*ip)) {
        Some(ip) => Err(UrlRefused::Private(ip)),
        None => Ok(()),
    }
}

/// The literal-address half of [`check_url`], for the moment of sending: names are checked by
/// [`GuardedResolver`] as they are resolved, which also defeats DNS answers that change.
pub fn refuse_literal(url: &reqwest::Url, allow_private: bool) -> Result<(), UrlRefused> {
    let Some(ip) = literal_ip(url.host_str().ok_or(UrlRefused::Malformed)?) else {
        return Ok(());
    };
    if !allow_private && is_private(ip) {
        return Err(UrlRefused::Private(ip));
    }
    Ok(())
}

/// A DNS resolver for the webhook client that drops private answers.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl GuardedResolver {
    pub fn shared() -> Arc<Self> {
        Arc::new(GuardedResolver)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.into_iter().filter(|sa| !is_private(sa.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves only to private, loopback or link-local addresses"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_private_ipv4_and_reserved_ranges() {
        for ip in [
            "::127.0.0.1",        // IPv4-compatible loopback
            "::10.0.0.1",         // IPv4-compatible private
            "::169.254.169.254",  // IPv4-compatible metadata service
            "::8.8.8.8",          // IPv4-compatible: deprecated, refused whatever it holds
            "::ffff:0:127.0.0.1", // IPv4-translated
            "2002:7f00:1::",      // 6to4 of 127.0.0.1
            "2002:a00:1::1",      // 6to4 of 10.0.0.1
            "2002:a9fe:a9fe::",   // 6to4 of 169.254.169.254
            "2002:c0a8:101::5",   // 6to4 of 192.168.1.1
            "64:ff9b::a00:1",     // NAT64 well-known prefix
            "64:ff9b:1::a00:1",   // NAT64 local-use prefix
            "64:ff9b:1:ffff::1",
            "fec0::1", // site-local
            "feff::1",
            "fe00::1",
            "198.18.0.1", // benchmarking
            "198.19.255.255",
            "::ffff:198.18.0.1",
            "2001::1",     // Teredo
            "2001:10::1",  // ORCHID
            "2001:20::1",  // ORCHIDv2
            "100::1",      // discard-only
            "3fff::1",     // documentation
            "192.88.99.1", // 6to4 relay anycast
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "2002:808:808::1", // 6to4 of 8.8.8.8
            "198.20.0.1",
            "198.17.255.255",
            "2001:4860:4860::8888",
            "2400:3200::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_into_private_networks_are_refused_unless_allowed() {
        assert_eq!(
            check_url("http://127.0.0.1:9000/hook", false).await,
            Err(UrlRefused::Private("127.0.0.1".parse().unwrap()))
        );
        assert!(matches!(
            check_url("http://localhost:9000/hook", false).await,
            Err(UrlRefused::Private(_))
        ));
        assert!(matches!(
            check_url("http://[::1]/", false).await,
            Err(UrlRefused::Private(_))
        ));
        assert_eq!(
            check_url("http://169.254.169.254/latest/meta-data", false).await,
            Err(UrlRefused::Private("169.254.169.254".parse().unwrap()))
        );
        for url in [
            "http://[::127.0.0.1]/",
            "http://[2002:7f00:1::]/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[fec0::1]/",
            "http://198.18.0.1/",
        ] {
            assert!(
                matches!(check_url(url, false).await, Err(UrlRefused::Private(_))),
                "{url}"
            );
            let u = reqwest::Url::parse(url).unwrap();
            assert!(refuse_literal(&u, false).is_err(), "{url}");
        }
        assert!(check_url("http://127.0.0.1:9000/hook", true).await.is_ok());
        assert!(check_url("http://8.8.8.8/hook", false).await.is_ok());
        assert_eq!(
            check_url("ftp://8.8.8.8/", false).await,
            Err(UrlRefused::Malformed)
        );
    }

    #[tokio::test]
    async fn the_resolver_drops_private_answers() {
        let name: Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(_) => panic!("localhost must not resolve"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("private"), "{err}");
    }
}
