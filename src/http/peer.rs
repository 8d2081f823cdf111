//! Who is on the other end: the caller's address for the audit trail. Forwarding headers
//! are believed only from a trusted proxy, and then only as far as trusted proxies go.
use std::net::{IpAddr, SocketAddr};

use actix_web::HttpRequest;
use actix_web::http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

use crate::config::ForwardedHeader;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The caller's address. When the TCP peer is a trusted proxy, the forwarding header the
/// proxies write (`header`) is walked from the right: the first address that is not a
/// trusted proxy is the caller.
///
/// CAUTION: never the leftmost entry: the caller writes it, and can write anything; and
/// never the other header, which the proxies pass along as the caller sent it.
pub fn remote_address(
    req: &HttpRequest,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip().to_canonical();
    if !is_trusted(trusted, peer) {
        return Some(peer);
    }
    let hops: Vec<Option<IpAddr>> = match header {
        ForwardedHeader::XForwardedFor => list(req, &X_FORWARDED_FOR).map(node).collect(),
        ForwardedHeader::Forwarded => list(req, &FORWARDED)
            .map(|element| forwarded_for(element).and_then(node))
            .collect(),
    };
    let mut caller = peer;
    for hop in hops.into_iter().rev() {
        // An unreadable hop ends what can be known: the last trusted one stands.
        let Some(ip) = hop.map(|ip| ip.to_canonical()) else {
            return Some(caller);
        };
        caller = ip;
        if !is_trusted(trusted, ip) {
            return Some(ip);
        }
    }
    Some(caller)
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Every entry of every line of header `name`, in order: several lines form one list.
fn list<'a>(req: &'a HttpRequest, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    req.headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `for=192.0.2.60;proto=https` → `192.0.2.60`
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`, `2001:db8::1`
fn node(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|sa| sa.ip()))
        .or_else(|| text.strip_prefix('[')?.split(']').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn from(peer: &str, headers: &[(&str, &str)], trusted: &str) -> String {
        from_with(peer, headers, trusted, ForwardedHeader::XForwardedFor)
    }

    fn from_with(
        peer: &str,
        headers: &[(&str, &str)],
        trusted: &str,
        header: ForwardedHeader,
    ) -> String {
        let mut req = TestRequest::default().peer_addr(format!("{peer}:5555").parse().unwrap());
        for (name, value) in headers {
            req = req.append_header((*name, *value));
        }
        let trusted = crate::config::parse_networks(trusted).unwrap();
        remote_address(&req.to_http_request(), &trusted, header)
            .unwrap()
            .to_string()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let xff = |v| [("x-forwarded-for", v)];
        assert_eq!(
            from("198.51.100.1", &xff("1.1.1.1"), "10.0.0.0/8"),
            "198.51.100.1"
        );
        assert_eq!(from("10.0.0.1", &xff("1.1.1.1"), ""), "10.0.0.1");
        assert_eq!(
            from(
                "10.0.0.1",
                &xff("6.6.6.6, 203.0.113.9, 10.1.1.1"),
                "10.0.0.0/8"
            ),
            "203.0.113.9",
            "the rightmost untrusted hop, not the caller's own leftmost entry"
        );
        assert_eq!(
            from(
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.9")
                ],
                "10.0.0.0/8"
            ),
            "203.0.113.9"
        );
        assert_eq!(
            from("10.0.0.1", &xff("nonsense, 10.2.2.2"), "10.0.0.0/8"),
            "10.2.2.2"
        );
        assert_eq!(
            from_with(
                "10.0.0.1",
                &[(
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https"
                )],
                "10.0.0.0/8",
                ForwardedHeader::Forwarded
            ),
            "2001:db8::7"
        );
        // A proxy that writes `Forwarded` passes the caller's own `X-Forwarded-For` on.
        assert_eq!(
            from_with(
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("forwarded", "for=203.0.113.9")
                ],
                "10.0.0.0/8",
                ForwardedHeader::Forwarded
            ),
            "203.0.113.9"
        );
    }
}
