//! Host-name matching, in one place: the matching form of a host, Istio's
//! "is this host covered by that one" relation, and wildcard lookups.

/// Matching form of a host: lower case, no trailing dot (deviation D7).
pub fn key(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Is host `n` covered by host `o` (both in matching form)? `*` covers
/// everything; `*.a.com` covers `b.a.com` and `*.b.a.com`, not `a.com`.
pub fn subset_of(n: &str, o: &str) -> bool {
    if o == "*" {
        return true;
    }
    match (n.strip_prefix('*'), o.strip_prefix('*')) {
        (None, None) => n == o,
        (None, Some(so)) => n.ends_with(so),
        (Some(_), None) => false,
        (Some(sn), Some(so)) => sn.ends_with(so),
    }
}

/// Istio's `host.Name.Matches`: the two names overlap (either may be a
/// wildcard).
pub fn overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a == b,
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
    }
}

/// The suffix a wildcard host matches names by (`*.example.com` →
/// `.example.com`; a partial wildcard `*foo.com` → `foo.com`); None for an
/// exact host.
pub fn wildcard_suffix(host_key: &str) -> Option<&str> {
    host_key.strip_prefix('*')
}

/// Does the name `key` (matching form) fall under the wildcard `suffix`? The
/// wildcard needs at least one more character: `*.example.com` does not match
/// `example.com`.
pub fn under_wildcard(key: &str, suffix: &str) -> bool {
    key.ends_with(suffix) && key.len() > suffix.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        assert_eq!(key("API.Example.com."), "api.example.com");
        assert!(subset_of("b.a.com", "*.a.com"));
        assert!(subset_of("*.b.a.com", "*.a.com"));
        assert!(!subset_of("*.a.com", "*.b.a.com"));
        assert!(!subset_of("*.a.com", "b.a.com"));
        assert!(subset_of("anything.io", "*"));
        assert_eq!(wildcard_suffix("*.a.com"), Some(".a.com"));
        assert_eq!(wildcard_suffix("a.com"), None);
        assert!(under_wildcard("x.a.com", ".a.com"));
        assert!(!under_wildcard("a.com", "a.com"));
    }
}
