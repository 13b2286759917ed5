//! The fleet web page `tlsmon aggregate` serves at `/`: hosts and their state, failures per
//! hour by cause (an SVG chart drawn here), the top failing services, clients and processes,
//! and the recent failures, each opening to its sentence, evidence and remedy. Server-side
//! HTML, no script, readable without JavaScript; filters are a plain GET form. Pure: the
//! store fills a [`FleetPage`], [`render`] writes the page. Every stored string is escaped.

use std::fmt::Write as _;

use super::view::{FleetView, Row};

/// What the page shows: the view (totals, tables) and, under the site and cause filters,
/// the chart's points and the recent failures.
#[derive(Debug, Clone)]
pub struct FleetPage {
    pub view: FleetView,
    /// Failed handshakes per hour (unix ms of the hour) and cause.
    pub hours: Vec<(i64, String, u64)>,
    pub recent: Vec<Recent>,
    /// Every site and every cause stored since `since` (the filters' choices).
    pub sites: Vec<String>,
    pub causes: Vec<String>,
}

/// One stored failure (an alert: its latest count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub last_ms: i64,
    pub site: String,
    pub host_name: String,
    pub process: String,
    pub role: String,
    pub server: String,
    pub client: String,
    pub cause: String,
    pub message: String,
    pub remedy: Option<String>,
    pub count: u64,
}

/// The page's filters, as the form sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// `1h`, `24h`, `7d`, ... (validated by the caller).
    pub since: String,
    pub site: Option<String>,
    pub cause: Option<String>,
}

/// Time ranges the form offers.
const RANGES: [&str; 5] = ["1h", "6h", "24h", "7d", "30d"];
/// Chart colours, one per cause in order of first appearance (then reused).
const COLOURS: [&str; 8] = [
    "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// The whole page.
pub fn render(p: &FleetPage, f: &Filters) -> String {
    let v = &p.view;
    let t = &v.totals;
    let mut out = String::with_capacity(32 * 1024);
    out.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"icon\" href=\"data:,\"><title>tlsmon fleet</title><style>",
    );
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n<h1>tlsmon fleet</h1>\n");
    filters_form(&mut out, p, f);
    let _ = writeln!(
        out,
        "<p id=\"totals\">{} hosts ({} online) · <b>{}</b> failed handshakes in {} alerts on {} \
         hosts · {} warnings · {} gap records ({} events dropped before publishing) · since {} \
         · store {}</p>",
        t.hosts,
        t.hosts_online,
        t.failures,
        t.events,
        t.failing_hosts,
        t.warnings,
        t.gaps,
        t.dropped,
        esc(&v.since),
        esc(&v.store)
    );
    out.push_str("<h2>Failures per hour, by cause</h2>\n");
    chart(&mut out, &p.hours);
    hosts(&mut out, v);
    ranked(&mut out, "servers", "Top failing services", &v.by_server);
    ranked(&mut out, "clients", "Top failing clients", &v.by_client);
    ranked(
        &mut out,
        "processes",
        "Top failing client programs",
        &v.by_process,
    );
    recent(&mut out, &p.recent);
    out.push_str("</body></html>\n");
    out
}

fn filters_form(out: &mut String, p: &FleetPage, f: &Filters) {
    out.push_str(
        "<form id=\"filters\" method=\"get\" action=\"/\">\n<label>since <select name=\"since\">",
    );
    for r in RANGES {
        option(out, r, r, f.since == r);
    }
    out.push_str("</select></label> <label>site <select name=\"site\">");
    option(out, "", "all", f.site.is_none());
    for s in with_chosen(&p.sites, f.site.as_deref()) {
        option(out, s, s, f.site.as_deref() == Some(s));
    }
    out.push_str("</select></label> <label>cause <select name=\"cause\">");
    option(out, "", "all", f.cause.is_none());
    for c in with_chosen(&p.causes, f.cause.as_deref()) {
        option(out, c, c, f.cause.as_deref() == Some(c));
    }
    out.push_str("</select></label> <button type=\"submit\">show</button></form>\n");
}

/// The stored choices, and the chosen one even when nothing stored has it (it stays shown).
fn with_chosen<'a>(stored: &'a [String], chosen: Option<&'a str>) -> Vec<&'a str> {
    let mut all: Vec<&str> = stored.iter().map(String::as_str).collect();
    if let Some(c) = chosen
        && !all.contains(&c)
    {
        all.push(c);
    }
    all
}

fn option(out: &mut String, value: &str, label: &str, selected: bool) {
    let _ = write!(
        out,
        "<option value=\"{}\"{}>{}</option>",
        esc(value),
        if selected { " selected" } else { "" },
        esc(label)
    );
}

/// A stacked bar per hour, one segment per cause; each segment carries its hour, cause and
/// count as data attributes and a tooltip.
fn chart(out: &mut String, hours: &[(i64, String, u64)]) {
    if hours.is_empty() {
        out.push_str("<p id=\"chart-empty\">No failures in this range.</p>\n");
        return;
    }
    let mut slots: Vec<i64> = hours.iter().map(|h| h.0).collect();
    slots.sort_unstable();
    slots.dedup();
    let mut causes: Vec<&str> = Vec::new();
    for (_, c, _) in hours {
        if !causes.contains(&c.as_str()) {
            causes.push(c);
        }
    }
    let total = |slot: i64| -> u64 { hours.iter().filter(|h| h.0 == slot).map(|h| h.2).sum() };
    let max = slots.iter().map(|&s| total(s)).max().unwrap_or(1).max(1);
    let (width, height, bar) = (720.0_f64, 180.0_f64, (720.0 / slots.len() as f64).min(40.0));
    let _ = write!(
        out,
        "<svg id=\"chart\" role=\"img\" aria-label=\"failed handshakes per hour by cause\" \
         width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\">",
        height + 20.0,
        height + 20.0
    );
    for (i, &slot) in slots.iter().enumerate() {
        let x = i as f64 * bar;
        let mut y = height;
        for (ci, cause) in causes.iter().enumerate() {
            let n: u64 = hours
                .iter()
                .filter(|h| h.0 == slot && h.1 == *cause)
                .map(|h| h.2)
                .sum();
            if n == 0 {
                continue;
            }
            let h = (n as f64 / max as f64 * height).max(1.0);
            y -= h;
            let hour = crate::clock::rfc3339((slot.max(0) as u64).saturating_mul(1_000_000));
            let _ = write!(
                out,
                "<rect class=\"point\" data-hour=\"{}\" data-cause=\"{}\" data-count=\"{n}\" \
                 x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\">\
                 <title>{} {}: {n}</title></rect>",
                esc(&hour),
                esc(cause),
                (bar - 2.0).max(1.0),
                COLOURS[ci % COLOURS.len()],
                esc(&hour),
                esc(cause)
            );
        }
    }
    let _ = write!(
        out,
        "<text x=\"0\" y=\"{}\" font-size=\"11\">max {max} per hour</text></svg>\n<p id=\"legend\">",
        height + 15.0
    );
    for (ci, cause) in causes.iter().enumerate() {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span> ",
            COLOURS[ci % COLOURS.len()],
            esc(cause)
        );
    }
    out.push_str("</p>\n");
}

fn hosts(out: &mut String, v: &FleetView) {
    out.push_str(
        "<h2>Hosts</h2>\n<table id=\"hosts\"><tr><th>site</th><th>host</th><th>state</th>\
         <th>version</th><th>failed (range)</th><th>top cause</th></tr>\n",
    );
    for h in &v.by_host {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"state {}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.site),
            esc(&h.name),
            esc(&h.state),
            esc(&h.state),
            esc(&h.version),
            h.failures,
            esc(h.top_cause.as_deref().unwrap_or("-"))
        );
    }
    out.push_str("</table>\n");
}

fn ranked(out: &mut String, id: &str, title: &str, rows: &[Row]) {
    let _ = write!(
        out,
        "<h2>{title}</h2>\n<table id=\"{id}\"><tr><th>name</th><th>cause</th><th>failed</th>\
         <th>alerts</th><th>hosts</th></tr>\n"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(r.cause.as_deref().unwrap_or("")),
            r.count,
            r.events,
            r.hosts
        );
    }
    out.push_str("</table>\n");
}

fn recent(out: &mut String, rows: &[Recent]) {
    out.push_str("<h2>Recent failures</h2>\n<ul id=\"failures\">\n");
    if rows.is_empty() {
        out.push_str("<li>none in this range</li>\n");
    }
    for r in rows {
        let when = crate::clock::rfc3339((r.last_ms.max(0) as u64).saturating_mul(1_000_000));
        let _ = writeln!(
            out,
            "<li class=\"failure\" data-cause=\"{cause}\"><details><summary>{when} · {site}/{host} · \
             {process} ({role}) · {server} ← {client} · <b>{cause}</b> ×{count}</summary>\
             <p class=\"message\">{message}</p><p class=\"evidence\">evidence: wire (the captured \
             handshake)</p><p class=\"remedy\">fix: {remedy}</p></details></li>",
            cause = esc(&r.cause),
            when = esc(&when),
            site = esc(&r.site),
            host = esc(&r.host_name),
            process = esc(&r.process),
            role = esc(&r.role),
            server = esc(&r.server),
            client = esc(&r.client),
            count = r.count,
            message = esc(&r.message),
            remedy = esc(r
                .remedy
                .as_deref()
                .unwrap_or("see docs/causes.md for this cause")),
        );
    }
    out.push_str("</ul>\n");
}

/// HTML-escapes text for element content and quoted attributes; control characters are
/// shown as U+FFFD (a captured name can hold anything).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1em}td,th{border-bottom:1px solid #ddd;\
padding:2px 8px;text-align:left}.state.online{color:#2ca02c}.state.offline{color:#d62728}\
#legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px}\
#failures{list-style:none;padding:0}#failures li{margin:4px 0}\
summary{cursor:pointer}.remedy{color:#1f5f1f}.message{margin:4px 0 0 1em}";

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> FleetPage {
        FleetPage {
            view: FleetView {
                schema: "tlsmon.fleet/1".into(),
                store: "sqlite:/x".into(),
                generated: "g".into(),
                since: "s".into(),
                totals: Default::default(),
                by_cause: vec![],
                by_server: vec![],
                by_client: vec![],
                by_process: vec![],
                by_host: vec![],
                over_time: vec![],
            },
            hours: vec![
                (3_600_000, "self_signed".into(), 3),
                (3_600_000, "cert_expired".into(), 1),
                (7_200_000, "self_signed".into(), 2),
            ],
            recent: vec![Recent {
                last_ms: 7_200_000,
                site: "lab".into(),
                host_name: "web1".into(),
                process: "/usr/bin/curl".into(),
                role: "client".into(),
                server: "<script>alert(1)</script>:443".into(),
                client: "web1".into(),
                cause: "self_signed".into(),
                message: "curl refused \"x\" & y".into(),
                remedy: Some("serve a CA-issued certificate".into()),
                count: 2,
            }],
            sites: vec!["lab".into()],
            causes: vec!["cert_expired".into(), "self_signed".into()],
        }
    }

    #[test]
    fn the_page_has_a_point_per_hour_and_cause_and_escapes_stored_text() {
        let html = render(
            &page(),
            &Filters {
                since: "24h".into(),
                site: Some("lab".into()),
                cause: None,
            },
        );
        assert_eq!(html.matches("<rect class=\"point\"").count(), 3);
        assert!(html.contains("data-cause=\"cert_expired\" data-count=\"1\""));
        assert!(!html.contains("<script>"), "stored text is escaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;:443"));
        assert!(html.contains("fix: serve a CA-issued certificate"));
        assert!(html.contains("<option value=\"lab\" selected>lab</option>"));
        assert!(html.contains("<option value=\"24h\" selected>"));
        assert_eq!(esc("a\u{1b}[2Jb"), "a\u{fffd}[2Jb");
    }
}
