//! The client address of a request: what per-address limits count and the access log shows.
//! Behind a load balancer every TCP peer is the balancer, so for a peer listed in
//! `CHATGATE_TRUSTED_PROXIES` the address comes from `X-Forwarded-For`: the right-most entry
//! that is not itself a trusted proxy. Entries to the left of it were written by the client
//! and are never believed. From any other peer the header is ignored.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use actix_web::{web, HttpRequest};
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The load balancers whose `X-Forwarded-For` is believed; app data for the guard and the
/// access log.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> TrustedProxies {
        TrustedProxies(nets.into())
    }
}

/// The client address of `req` as text, or `unknown` when the connection has no IP peer.
/// Without `TrustedProxies` app data, the TCP peer.
pub fn client_label(req: &HttpRequest) -> String {
    let trusted = req
        .app_data::<web::Data<TrustedProxies>>()
        .map(|t| t.0.clone())
        .unwrap_or_default();
    let Some(peer) = req.peer_addr() else {
        return "unknown".into();
    };
    let forwarded = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .filter_map(|value| value.to_str().ok());
    client_addr(peer.ip(), forwarded, &trusted).to_string()
}

/// The client address from the TCP `peer` and the `X-Forwarded-For` header lines (in the order
/// received). Walks the chain from the right while each hop is trusted; the first untrusted
/// address is the client. An entry that is not an address stops the walk at the last address
/// read, since nothing left of it can be attributed; a chain of trusted hops only ends at its
/// left-most address.
pub fn client_addr<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let lines: Vec<&str> = forwarded_for.into_iter().collect();
    let entries = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            return client;
        };
        client = ip;
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or IPv6 brackets.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn table() {
        let lb = nets(&["10.0.0.0/8", "fd00::/8"]);
        let cases: &[(&str, &[&str], &[IpNet], &str)] = &[
            // Untrusted peer: the header is ignored.
            ("192.0.2.1", &["203.0.113.5"], &lb, "192.0.2.1"),
            ("192.0.2.1", &["203.0.113.5"], &[], "192.0.2.1"),
            // Trusted peer without the header: the peer itself.
            ("10.0.0.1", &[], &lb, "10.0.0.1"),
            ("10.0.0.1", &[""], &lb, "10.0.0.1"),
            // The proxy appended the real client; the left part is the client's own claim.
            ("10.0.0.1", &["6.6.6.6, 203.0.113.5"], &lb, "203.0.113.5"),
            // Two trusted hops.
            ("10.0.0.1", &["203.0.113.5, 10.1.1.1"], &lb, "203.0.113.5"),
            // Several header lines read as one list, in order.
            (
                "10.0.0.1",
                &["6.6.6.6", "203.0.113.5,10.1.1.1"],
                &lb,
                "203.0.113.5",
            ),
            ("10.0.0.1", &["203.0.113.5", "10.1.1.1"], &lb, "203.0.113.5"),
            // Ports, brackets and IPv4-mapped addresses.
            ("10.0.0.1", &["203.0.113.5:4711"], &lb, "203.0.113.5"),
            ("10.0.0.1", &["[2001:db8::1]:443"], &lb, "2001:db8::1"),
            ("10.0.0.1", &["[2001:db8::1]"], &lb, "2001:db8::1"),
            (
                "::ffff:10.0.0.1",
                &["::ffff:203.0.113.5"],
                &lb,
                "203.0.113.5",
            ),
            ("fd00::1", &["2001:db8::7"], &lb, "2001:db8::7"),
            // Garbage stops the walk at the last address read.
            ("10.0.0.1", &["unknown"], &lb, "10.0.0.1"),
            (
                "10.0.0.1",
                &["203.0.113.5, junk, 10.2.2.2"],
                &lb,
                "10.2.2.2",
            ),
            // Every hop trusted: the left-most one.
            ("10.0.0.1", &["10.3.3.3, 10.2.2.2"], &lb, "10.3.3.3"),
        ];
        for (peer, header, trusted, expected) in cases {
            assert_eq!(
                client_addr(ip(peer), header.iter().copied(), trusted),
                ip(expected),
                "peer {peer} header {header:?}"
            );
        }
    }

    fn any_ipv4() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 4]>().prop_map(IpAddr::from)
    }

    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![any_ipv4().prop_map(|i| i.to_string()), "[a-z0-9:. ]{0,12}",]
    }

    proptest! {
        /// Only a trusted peer's header is read.
        #[test]
        fn untrusted_peer_is_the_client(
            peer in any_ipv4(),
            header in prop::collection::vec(entry(), 0..5),
        ) {
            prop_assume!(!matches!(peer, IpAddr::V4(v4) if v4.octets()[0] == 10));
            let joined = header.join(",");
            let trusted = nets(&["10.0.0.0/8"]);
            prop_assert_eq!(client_addr(peer, [joined.as_str()], &trusted), peer);
        }

        /// Whatever the client wrote, the address the first trusted proxy appended wins.
        #[test]
        fn client_written_entries_cannot_override_the_appended_one(
            forged in prop::collection::vec(entry(), 0..5),
            client in any_ipv4(),
            hops in prop::collection::vec(0u8..=255, 0..4),
        ) {
            prop_assume!(!matches!(client, IpAddr::V4(v4) if v4.octets()[0] == 10));
            let trusted = nets(&["10.0.0.0/8"]);
            let mut chain = forged.clone();
            chain.push(client.to_string());
            chain.extend(hops.iter().map(|h| format!("10.0.{h}.1")));
            let joined = chain.join(", ");
            prop_assert_eq!(client_addr(ip("10.9.9.9"), [joined.as_str()], &trusted), client);
        }

        /// The result is the peer or an address that appears in the header.
        #[test]
        fn result_comes_from_the_request(
            peer in any_ipv4(),
            header in prop::collection::vec(entry(), 0..6),
        ) {
            let trusted = nets(&["0.0.0.0/1"]);
            let joined = header.join(",");
            let found = client_addr(peer, [joined.as_str()], &trusted);
            let in_header = header.iter().any(|e| parse_entry(e.trim()) == Some(found));
            prop_assert!(found == peer || in_header);
        }
    }
}
