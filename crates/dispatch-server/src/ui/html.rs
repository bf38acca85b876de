//! Building HTML by hand: escaping, the page layout every page shares, and
//! the small pieces (times, numbers, forms) pages are made of.
//!
//! **Invariant:** every text that comes from a request, a task or a
//! setting goes through [`esc`] (or [`Html::text`]) before it reaches the
//! page; only this module's fixed markup is written raw.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use dispatch_core::Millis;

/// Escapes text for HTML content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a URL's query value or path segment.
pub(crate) fn url(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A page's HTML being written.
#[derive(Default)]
pub(crate) struct Html(pub(crate) String);

impl Html {
    /// Fixed markup, written as is.
    pub(crate) fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    /// Text, escaped.
    pub(crate) fn text(&mut self, s: &str) -> &mut Self {
        self.0.push_str(&esc(s));
        self
    }
}

impl std::fmt::Write for Html {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.push_str(s);
        Ok(())
    }
}

/// A time as people read it, in UTC: `2026-12-03 15:04:05`.
pub(crate) fn time(ms: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms as i64) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "?".to_owned(),
    }
}

/// How long ago (or ahead) `ms` is from `now`: `3 s ago`, `in 2 min`.
pub(crate) fn relative(ms: Millis, now: Millis) -> String {
    let (d, ahead) = if ms > now {
        (ms - now, true)
    } else {
        (now - ms, false)
    };
    let s = d / 1000;
    let span = match s {
        0 => return "now".to_owned(),
        1..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        7_200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if ahead {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A time cell: the time, with how long ago as its tooltip.
pub(crate) fn time_cell(ms: Option<Millis>, now: Millis) -> String {
    match ms {
        None => "<span class=muted>–</span>".to_owned(),
        Some(ms) => format!(
            "<time title=\"{}\">{}</time>",
            esc(&relative(ms, now)),
            time(ms)
        ),
    }
}

/// A number with thin separators: `1 234 567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// `n` and a noun, singular or plural: `1 task`, `2 tasks`.
pub(crate) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A state as a coloured badge.
pub(crate) fn state_badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", esc(state))
}

/// A small form that POSTs to `action` with the CSRF token and one button.
pub(crate) fn button_form(action: &str, csrf: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=post action=\"{}\" class=inline><input type=hidden name=csrf value=\"{}\">\
         <button type=submit class=\"{}\">{}</button></form>",
        esc(action),
        esc(csrf),
        esc(class),
        esc(label)
    )
}

/// What the shared layout needs to know about the viewer.
pub(crate) struct Viewer<'a> {
    /// Who is signed in: a token's name; `None` without tokens.
    pub(crate) who: Option<&'a str>,
    /// Whether the viewer may act (admin scope, or no tokens).
    pub(crate) admin: bool,
    pub(crate) csrf: &'a str,
}

/// The sections of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/ui", "Overview"),
    ("/ui/tasks", "Tasks"),
    ("/ui/workers", "Workers"),
    ("/ui/queues", "Queues"),
    ("/ui/schedules", "Schedules"),
    ("/ui/cluster", "Cluster"),
];

/// A whole page: the header with the navigation, the flash message, the
/// title, `intro` (not refreshed) and `live` (refreshed every 2 s by the
/// script, which fetches the page again with `X-Dispatch-Live`).
pub(crate) fn page(
    title: &str,
    section: &str,
    viewer: &Viewer<'_>,
    flash: Option<&str>,
    intro: &str,
    live: &str,
    refresh: bool,
) -> String {
    let mut h = Html::default();
    h.raw("<!doctype html><html lang=en><head><meta charset=utf-8>")
        .raw("<meta name=viewport content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · Dispatch</title>")
        .raw("<link rel=stylesheet href=\"/ui/assets/ui.css\">")
        .raw("<script src=\"/ui/assets/ui.js\" defer></script></head><body>")
        .raw("<header><a class=brand href=\"/ui\">Dispatch</a><nav>");
    for (path, label) in NAV {
        let current = if *path == section {
            " aria-current=page"
        } else {
            ""
        };
        let _ = write!(h, "<a href=\"{path}\"{current}>{label}</a>");
    }
    h.raw("</nav><div class=viewer>").raw(
        "<button type=button id=live-toggle class=ghost aria-pressed=false>Pause updates</button>",
    );
    if let Some(who) = viewer.who {
        h.raw("<span class=who>").text(who);
        if !viewer.admin {
            h.raw(" <span class=tag>read-only</span>");
        }
        h.raw("</span>")
            .raw(&button_form("/ui/logout", viewer.csrf, "Sign out", "ghost"));
    }
    h.raw("</div></header><main>");
    if let Some(msg) = flash {
        h.raw("<p class=flash role=status>").text(msg).raw("</p>");
    }
    h.raw("<h1>").text(title).raw("</h1>").raw(intro);
    // A page answering a POST (a confirmation) is not fetched again.
    h.raw(if refresh { "<div id=live>" } else { "<div>" })
        .raw(live)
        .raw("</div>");
    h.raw("<p class=stamp id=stamp></p></main></body></html>");
    h.0
}

/// A page of its own, without navigation: sign-in, errors before it.
pub(crate) fn bare_page(title: &str, body: &str) -> String {
    let mut h = Html::default();
    h.raw("<!doctype html><html lang=en><head><meta charset=utf-8>")
        .raw("<meta name=viewport content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · Dispatch</title>")
        .raw("<link rel=stylesheet href=\"/ui/assets/ui.css\"></head><body class=bare>")
        .raw("<main class=narrow><p class=brand>Dispatch</p><h1>")
        .text(title)
        .raw("</h1>")
        .raw(body)
        .raw("</main></body></html>");
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_open_markup() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(url("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn numbers_and_times_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234), "1\u{202f}234");
        assert_eq!(count(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(relative(10_000, 75_000), "65 s ago");
        assert_eq!(relative(10 * 60_000, 0), "in 10 min");
        assert_eq!(relative(5, 5), "now");
    }
}
