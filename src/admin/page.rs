//! The status page, `GET /` on the admin listener: one self-contained HTML document, rendered on
//! the server, with no script at all. It reloads itself with `<meta http-equiv="refresh">`
//! (every 5 s, `?refresh=N` for 1 to 300 s), and its Content-Security-Policy allows nothing but
//! its own inline stylesheet, by hash: no script, no image, no request anywhere else.

use std::fmt::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;

use super::status::{NodeStatus, Status};

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#fafbfc}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
p.meta{color:#556;margin:.2em 0}\
table{border-collapse:collapse;background:#fff;box-shadow:0 0 0 1px #dde}\
th,td{padding:.35em .7em;text-align:left;border-bottom:1px solid #eef;white-space:nowrap}\
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.badge{display:inline-block;padding:0 .5em;border-radius:.6em;font-weight:600}\
.up{background:#d7f5dd;color:#0b6b21}.down{background:#fde0e0;color:#a4161a}\
.draining{background:#fff2cc;color:#7a5b00}.idle{background:#dbeafe;color:#1e40af}\
.serving{color:#556}.warn{color:#a4161a;font-weight:600}code{font-size:.95em}";

/// `Content-Security-Policy` of the page: its stylesheet by hash, nothing else.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CSS.as_bytes());
        format!(
            "default-src 'none'; style-src 'sha256-{}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            base64::engine::general_purpose::STANDARD.encode(h.as_ref())
        )
    })
}

/// The refresh interval asked for with `?refresh=N` (seconds, 1 to 300), else 5.
pub fn refresh_from_query(query: Option<&str>) -> u32 {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("refresh="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=300).contains(n))
        .unwrap_or(5)
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn drain_cell(n: &NodeStatus, st: &Status) -> (&'static str, String) {
    if !n.view.draining {
        return ("serving", "serving".into());
    }
    if n.idle {
        return (
            "idle",
            format!(
                "<span class=\"badge idle\">idle: safe to stop</span> no request for {} s, nothing in flight, no tunnel",
                st.drain_idle_after_seconds
            ),
        );
    }
    let mut why = Vec::new();
    if n.view.in_flight > 0 {
        why.push(format!("{} in flight", n.view.in_flight));
    }
    if n.view.tunnels > 0 {
        why.push(format!("{} tunnel(s) open", n.view.tunnels));
    }
    if why.is_empty() {
        why.push(format!(
            "waiting for {} s without a request",
            st.drain_idle_after_seconds
        ));
    }
    (
        "draining",
        format!(
            "<span class=\"badge draining\">draining</span> {}",
            esc(&why.join(", "))
        ),
    )
}

/// The page for `st`, reloading every `refresh` seconds.
pub fn render(st: &Status, refresh: u32) -> String {
    let mut h = String::with_capacity(4096 + 512 * st.nodes.len());
    let now = crate::tls::rfc3339_secs((st.now_ms / 1000) as i64);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{refresh}\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>bpgate status</title><style>{CSS}</style></head><body>\n\
<h1>bpgate</h1>\
<p class=\"meta\" id=\"summary\" data-ready=\"{ready}\">{readiness} · configuration generation <b id=\"generation\">{gen}</b> loaded {loaded} · up {up} · read {now}, reloads every {refresh} s</p>\n",
        ready = st.ready,
        readiness = match (st.shutting_down, st.ready, st.panic) {
            (true, _, _) => "<span class=\"badge down\">shutting down</span>",
            (false, _, true) => {
                "<span class=\"badge down\" id=\"panic\">panic mode: every node fails its checks, all are routed to</span>"
            }
            (false, true, false) => "<span class=\"badge up\">ready</span>",
            (false, false, false) => "<span class=\"badge down\">not ready</span>",
        },
        gen = st.generation,
        loaded = esc(&st.generation_loaded_at),
        up = uptime(st.uptime_seconds),
    );

    h.push_str("<h2>Nodes</h2>\n<table id=\"nodes\"><thead><tr><th>node</th><th>address</th><th>health</th><th>drain</th><th>in flight</th><th>tunnels</th><th>requests/s</th><th>5xx/s</th><th>sticky share</th><th>last request</th></tr></thead><tbody>\n");
    for n in &st.nodes {
        let health = if n.view.healthy { "up" } else { "down" };
        let (drain, drain_html) = drain_cell(n, st);
        let check = n
            .view
            .last_check
            .as_ref()
            .and_then(|c| {
                c.error
                    .clone()
                    .or_else(|| c.status.map(|s| format!("last check: HTTP {s}")))
            })
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr data-node=\"{name}\" data-health=\"{health}\" data-drain=\"{drain}\">\
<td>{name}</td><td><code>{url}</code></td>\
<td class=\"health\" title=\"{check}\"><span class=\"badge {health}\">{health}</span></td>\
<td class=\"drain\">{drain_html}</td>\
<td class=\"num\">{inflight}</td><td class=\"num\">{tunnels}</td>\
<td class=\"num rps\">{rps:.1}</td><td class=\"num eps\">{eps:.1}</td>\
<td class=\"num\">{share}</td><td>{last}</td></tr>",
            name = esc(&n.view.name),
            url = esc(&n.view.url),
            check = esc(&check),
            inflight = n.view.in_flight,
            tunnels = n.view.tunnels,
            rps = n.requests_per_second,
            eps = n.errors_per_second,
            share = n
                .sticky_share
                .map(|s| format!("{:.0} %", s * 100.0))
                .unwrap_or_else(|| "–".into()),
            last = match (n.last_request_ms, &n.last_request_at) {
                (Some(ms), Some(at)) =>
                    format!("<span title=\"{}\">{}</span>", esc(at), ago(st.now_ms, ms)),
                _ => "none yet".into(),
            },
        );
    }
    let _ = write!(
        h,
        "</tbody></table>\n<p class=\"meta\">Rates over the last 10 s. A drained node is idle (safe to stop) after {} s with nothing in flight, no open tunnel and no request (<code>admin.drain_idle_after</code>). Drain with <code>curl -X POST http://{}/upstreams/NAME/drain</code> (and <code>-H 'Authorization: Bearer …'</code> when <code>admin.token</code> is set).</p>\n",
        st.drain_idle_after_seconds,
        esc(&st.admin_addr),
    );

    let c = &st.certificate;
    let _ = write!(
        h,
        "<h2>Certificate</h2>\n<table id=\"certificate\"><tbody>\
<tr><th>subject</th><td>{subject}{dev}</td></tr>\
<tr><th>valid until</th><td>{until}</td></tr>\
<tr><th>days left</th><td id=\"days-left\" class=\"{cls}\">{days}</td></tr></tbody></table>\n",
        subject = esc(&c.subject),
        dev = if c.development {
            " <span class=\"warn\">(development certificate)</span>"
        } else {
            ""
        },
        until = esc(&c.not_after),
        cls = if c.days_left < 14 { "warn" } else { "" },
        days = c.days_left,
    );

    h.push_str("<h2>Audit trail</h2>\n");
    match &st.audit {
        None => h.push_str("<p class=\"warn\" id=\"audit\">disabled (audit.enabled = false)</p>\n"),
        Some(a) => {
            let _ = write!(
                h,
                "<table id=\"audit\"><tbody>\
<tr><th>writable</th><td class=\"{wcls}\">{writable}</td></tr>\
<tr><th>queue</th><td id=\"audit-queue\">{q} lines waiting</td></tr>\
<tr><th>write errors</th><td id=\"audit-errors\" class=\"{ecls}\">{e}</td></tr>\
<tr><th>lines written</th><td>{lines}</td></tr></tbody></table>",
                wcls = if a.writable { "" } else { "warn" },
                writable = if a.writable {
                    "yes"
                } else {
                    "NO: the trail cannot be written"
                },
                q = a.queue_depth,
                ecls = if a.write_errors > 0 { "warn" } else { "" },
                e = a.write_errors,
                lines = a.lines,
            );
        }
    }
    h.push_str("<p class=\"meta\">JSON: <code>/upstreams</code>, <code>/readyz</code>; Prometheus: <code>/metrics</code>.</p>\n</body></html>\n");
    h
}

fn uptime(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_bounds() {
        assert_eq!(refresh_from_query(None), 5);
        assert_eq!(refresh_from_query(Some("refresh=1")), 1);
        assert_eq!(refresh_from_query(Some("a=b&refresh=300")), 300);
        assert_eq!(refresh_from_query(Some("refresh=0")), 5);
        assert_eq!(refresh_from_query(Some("refresh=301")), 5);
        assert_eq!(refresh_from_query(Some("refresh=x")), 5);
    }

    #[test]
    fn escaping_and_csp() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let c = csp();
        assert!(
            c.starts_with("default-src 'none'; style-src 'sha256-"),
            "{c}"
        );
        assert!(!c.contains("unsafe"), "{c}");
        assert!(
            !c.contains("script-src"),
            "scripts fall under default-src 'none'"
        );
    }
}
