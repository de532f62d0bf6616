//! Per-route limits (`[[routes]]`): which response timeout and body limit a request gets,
//! decided once at the connection edge from its path and carried in the request's extensions.
//!
//! A route is a path prefix below the base path, compared segment by segment: `*` matches any
//! one segment (Botpress's `:botId` in `/bots/:botId/import` sits in the middle, where a plain
//! prefix cannot reach), ASCII case is ignored (Express routes case-insensitively, so a route
//! that lowers a limit cannot be dodged with `/API/...`), and the most specific route wins: the
//! one with the most segments, then the most literal ones, then the first listed.

use std::time::Duration;

use crate::config::{route_pattern, RouteConfig, ROUTE_MAX_SEGMENTS};

/// The limits one request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimits {
    /// Largest request body: a declared `Content-Length` above it is refused with 413 before
    /// anything is forwarded; a chunked body is cut there.
    pub max_body: u64,
    /// How long the node may stay silent: after the request body is sent, until its response
    /// head; while the body is still being sent, between two pieces of it.
    pub response_timeout: Duration,
}

#[derive(Debug)]
enum Segment {
    Any,
    Literal(String),
}

#[derive(Debug)]
struct Route {
    segments: Vec<Segment>,
    limits: RouteLimits,
}

/// Segments a route may have (configuration validation refuses deeper prefixes).
const MAX_DEPTH: usize = ROUTE_MAX_SEGMENTS;

/// One generation's route table.
#[derive(Debug)]
pub struct Routes {
    base: String,
    default: RouteLimits,
    /// Segments of the longest route.
    depth: usize,
    /// Most specific first.
    table: Vec<Route>,
}

impl Routes {
    /// `routes` are validated configuration entries (an invalid prefix is skipped); a field a
    /// route leaves out takes its value from `default`.
    pub fn new(base_path: &str, default: RouteLimits, routes: &[RouteConfig]) -> Routes {
        let mut table: Vec<Route> = routes
            .iter()
            .filter_map(|r| {
                let segments = route_pattern(&r.prefix)
                    .ok()
                    .filter(|s| s.len() <= MAX_DEPTH)?
                    .into_iter()
                    .map(|s| match s {
                        "*" => Segment::Any,
                        lit => Segment::Literal(lit.to_string()),
                    })
                    .collect();
                Some(Route {
                    segments,
                    limits: RouteLimits {
                        max_body: r.max_body.map_or(default.max_body, |b| b.0),
                        response_timeout: r.response_timeout.unwrap_or(default.response_timeout),
                    },
                })
            })
            .collect();
        // Stable: equally specific routes keep their listed order.
        table.sort_by_key(|r| {
            let literals = r
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            std::cmp::Reverse((r.segments.len(), literals))
        });
        Routes {
            base: base_path.to_string(),
            default,
            depth: table.first().map_or(0, |r| r.segments.len()),
            table,
        }
    }

    /// The global limits (no route matched).
    pub fn default_limits(&self) -> RouteLimits {
        self.default
    }

    /// The limits for a request path as the client sent it (base path included).
    pub fn resolve(&self, path: &str) -> RouteLimits {
        let rel = if self.base.is_empty() {
            path
        } else {
            match path.strip_prefix(self.base.as_str()) {
                Some(r) if r.is_empty() || r.starts_with('/') => r,
                // Outside the base path: answered 404 by the base-path layer.
                _ => return self.default,
            }
        };
        let rel = rel.strip_prefix('/').unwrap_or(rel);
        // The path is split once, as deep as the deepest route looks (every request pays this,
        // nearly always to find no route): a route longer than the path is skipped unread.
        let mut segs: [&[u8]; MAX_DEPTH] = [b""; MAX_DEPTH];
        let mut n = 0;
        for p in rel.as_bytes().split(|b| *b == b'/') {
            if n == self.depth {
                break;
            }
            segs[n] = p;
            n += 1;
        }
        'routes: for route in &self.table {
            if route.segments.len() > n {
                continue;
            }
            for (seg, p) in route.segments.iter().zip(&segs) {
                let ok = match seg {
                    Segment::Any => !p.is_empty(),
                    Segment::Literal(l) => p.eq_ignore_ascii_case(l.as_bytes()),
                };
                if !ok {
                    continue 'routes;
                }
            }
            return route.limits;
        }
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{builtin_routes, ByteSize};

    const DEFAULT: RouteLimits = RouteLimits {
        max_body: 32 << 20,
        response_timeout: Duration::from_secs(130),
    };

    fn route(prefix: &str, secs: Option<u64>, body: Option<u64>) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            response_timeout: secs.map(Duration::from_secs),
            max_body: body.map(ByteSize),
        }
    }

    #[test]
    fn builtin_routes_cover_the_cli_and_the_bot_archives() {
        let r = Routes::new("/botpress", DEFAULT, &builtin_routes());
        for p in [
            "/botpress/api/v1/admin/management/versioning/update",
            "/botpress/api/v2/admin/management/versioning/export",
            "/botpress/api/v2/admin/workspace/bots/my-bot/import",
            "/botpress/api/v1/admin/workspace/bots/my-bot/import?overwrite=true",
            "/botpress/API/V2/Admin/Workspace/Bots/x/Import",
        ] {
            let l = r.resolve(p.split('?').next().unwrap());
            assert_eq!(l.response_timeout, Duration::from_secs(1200), "{p}");
            assert_eq!(l.max_body, 2 << 30, "{p}");
        }
        let export = r.resolve("/botpress/api/v2/admin/workspace/bots/b/export");
        assert_eq!(export.response_timeout, Duration::from_secs(1200));
        assert_eq!(export.max_body, DEFAULT.max_body);
        for p in [
            "/botpress/api/v1/bots/b/media",
            "/botpress/api/v2/admin/workspace/bots//import",
            "/botpress/api/v2/admin/workspace/bots/import",
            "/botpress/api/v2/admin/management/versioningX",
            "/api/v2/admin/management/versioning",
            "/botpressapi/v2/admin/management/versioning",
        ] {
            assert_eq!(r.resolve(p), DEFAULT, "{p}");
        }
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_order() {
        let r = Routes::new(
            "",
            DEFAULT,
            &[
                route("/api", Some(1), None),
                route("/api/v1/bots/*/mod", Some(2), None),
                route("/api/v1/bots/*/mod/qna/import", None, Some(7)),
                route("/api/v1/bots/special/mod", Some(3), None),
            ],
        );
        assert_eq!(r.resolve("/api/x").response_timeout, Duration::from_secs(1));
        assert_eq!(
            r.resolve("/api/v1/bots/b/mod/x").response_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            r.resolve("/api/v1/bots/special/mod/x").response_timeout,
            Duration::from_secs(3),
            "a literal segment beats `*` at the same depth"
        );
        let deep = r.resolve("/api/v1/bots/b/mod/qna/import");
        assert_eq!(deep.max_body, 7);
        assert_eq!(
            deep.response_timeout, DEFAULT.response_timeout,
            "an unset field is the global value"
        );
        assert_eq!(r.resolve("/other"), DEFAULT);
    }

    #[test]
    fn routes_as_deep_as_allowed_match_and_shorter_paths_do_not() {
        let deepest = "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/*";
        let r = Routes::new("/bp", DEFAULT, &[route(deepest, Some(9), None)]);
        let limited = Duration::from_secs(9);
        assert_eq!(
            r.resolve("/bp/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p")
                .response_timeout,
            limited
        );
        assert_eq!(
            r.resolve("/bp/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r")
                .response_timeout,
            limited
        );
        for p in [
            "/bp/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o",
            "/bp/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/",
            "/bp/a/b/c/d/e/f/g/h/i/j/k/l/m/n/x/p",
        ] {
            assert_eq!(r.resolve(p), DEFAULT, "{p}");
        }
    }
}
