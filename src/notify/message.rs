//! What goes on the wire for each format: pure functions from events to an HTTP request.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::config::{Format, secret_key};
use super::labels::{self, Language};
use super::sign;
use crate::domain::{AlertEvent, AlertEventType};

/// Where and how one webhook is reached.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub url: &'a str,
    pub secret: Option<&'a str>,
    pub format: Format,
}

/// Settings shared by every message.
#[derive(Debug, Clone)]
pub struct Context {
    pub source: String,
    pub dashboard_url: String,
    /// The language of chat texts (`notify.language`).
    pub language: Language,
}

/// One HTTP POST, ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// WeCom refuses markdown content over 2048 bytes; the others accept far more, but a chat
/// message longer than a screen is not read.
fn max_text_bytes(format: Format) -> usize {
    match format {
        Format::WeCom => 2048,
        _ => 4000,
    }
}

/// Most alerts one digest message lists.
pub const DIGEST_MAX_ALERTS: usize = 20;

/// The message for one event.
pub fn single(
    t: Target<'_>,
    ev: &AlertEvent,
    ctx: &Context,
    now: DateTime<Utc>,
) -> anyhow::Result<Outgoing> {
    if t.format == Format::Generic {
        return generic(t, ev, ctx, now);
    }
    let lang = ctx.language;
    let title = headline(ev, lang);
    let mut lines = facts(ev, t.format, lang);
    lines.push(link(
        t.format,
        &alert_link(ctx, ev.alert.id),
        labels::field(lang, "open_dashboard"),
    ));
    chat(t, &title, &lines, now)
}

/// One message standing for several events, all of which it names.
pub fn digest(
    t: Target<'_>,
    events: &[AlertEvent],
    ctx: &Context,
    now: DateTime<Utc>,
) -> anyhow::Result<Outgoing> {
    let lang = ctx.language;
    let sep = if lang == Language::ZhCn { "" } else { " " };
    let title = format!("{}{sep}{}", events.len(), labels::field(lang, "updates"));
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| digest_line(e, t.format, lang))
        .collect();
    lines.push(link(
        t.format,
        &ctx.dashboard_url,
        labels::field(lang, "open_dashboard"),
    ));
    chat(t, &title, &lines, now)
}

/// How many of `events`, taken in order, fit in successive digest messages.
pub fn digest_chunks(format: Format, events: &[AlertEvent]) -> Vec<usize> {
    // Room for the title, the link and the markdown around them.
    let budget = max_text_bytes(format).saturating_sub(300);
    let mut chunks = Vec::new();
    let (mut n, mut bytes) = (0usize, 0usize);
    for e in events {
        // Sized for the longer language, so a chunk fits whichever the message is written in.
        let len = Language::ALL
            .iter()
            .map(|&l| digest_line(e, format, l).len())
            .max()
            .unwrap_or(0)
            + 1;
        if n > 0 && (n == DIGEST_MAX_ALERTS || bytes + len > budget) {
            chunks.push(n);
            (n, bytes) = (0, 0);
        }
        n += 1;
        bytes += len;
    }
    if n > 0 {
        chunks.push(n);
    }
    chunks
}

/// The CloudEvents type of an event: `hyfleet.alert.opened`, ….
pub fn cloudevents_type(t: AlertEventType) -> String {
    format!("hyfleet.{}", t.as_str())
}

fn generic(
    t: Target<'_>,
    ev: &AlertEvent,
    ctx: &Context,
    now: DateTime<Utc>,
) -> anyhow::Result<Outgoing> {
    let body = serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": ev.id.to_string(),
        "source": ctx.source,
        "type": cloudevents_type(ev.event_type),
        "time": ev.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "subject": ev.alert.vehicle_id,
        "datacontenttype": "application/json",
        "data": ev.alert,
    }))?;
    let key = secret_key(t.secret.unwrap_or_default()).map_err(anyhow::Error::msg)?;
    let id = ev.id.to_string();
    let ts = now.timestamp();
    let signature = sign::standard_webhooks(&key, &id, ts, &body);
    Ok(Outgoing {
        url: t.url.to_owned(),
        headers: vec![
            ("content-type", "application/cloudevents+json".into()),
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ],
        body,
    })
}

fn chat(
    t: Target<'_>,
    title: &str,
    lines: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<Outgoing> {
    let mut url = reqwest::Url::parse(t.url)?;
    let secret = t.secret.filter(|s| !s.is_empty());
    let body = match t.format {
        Format::DingTalk => {
            if let Some(secret) = secret {
                let ts = now.timestamp_millis();
                url.query_pairs_mut()
                    .append_pair("timestamp", &ts.to_string())
                    .append_pair("sign", &sign::dingtalk(secret, ts));
            }
            let text = truncate(
                format!("### {title}\n\n{}", lines.join("\n")),
                max_text_bytes(t.format),
            );
            json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
        }
        Format::WeCom => {
            let content = truncate(
                format!("### {title}\n{}", lines.join("\n")),
                max_text_bytes(t.format),
            );
            json!({"msgtype": "markdown", "markdown": {"content": content}})
        }
        Format::Feishu => {
            let text = truncate(
                format!("{title}\n{}", lines.join("\n")),
                max_text_bytes(t.format),
            );
            let mut body = json!({"msg_type": "text", "content": {"text": text}});
            if let Some(secret) = secret {
                let ts = now.timestamp();
                body["timestamp"] = json!(ts.to_string());
                body["sign"] = json!(sign::feishu(secret, ts));
            }
            body
        }
        Format::Slack => {
            let text = truncate(
                format!("*{}*\n{}", slack_escape(title), lines.join("\n")),
                max_text_bytes(t.format),
            );
            json!({"text": text})
        }
        Format::Generic => anyhow::bail!("generic webhooks get CloudEvents, not chat text"),
    };
    Ok(Outgoing {
        url: url.into(),
        headers: vec![("content-type", "application/json".into())],
        body: serde_json::to_vec(&body)?,
    })
}

fn headline(ev: &AlertEvent, lang: Language) -> String {
    format!(
        "{}: {} · {}",
        labels::event(lang, ev.event_type.as_str()),
        labels::rule(lang, &ev.alert.rule),
        ev.alert.vehicle_id
    )
}

fn place(ev: &AlertEvent) -> Option<String> {
    Some(format!("{:.5}, {:.5}", ev.alert.lat?, ev.alert.lon?))
}

fn nearest_zone(ev: &AlertEvent) -> Option<String> {
    let d = &ev.alert.details;
    let zone = d.get("nearest_zone")?.as_str()?;
    Some(match d.get("distance_m").and_then(|m| m.as_f64()) {
        Some(m) => format!("{zone} ({m:.0} m)"),
        None => zone.to_owned(),
    })
}

fn facts(ev: &AlertEvent, format: Format, lang: Language) -> Vec<String> {
    let a = &ev.alert;
    let f = |name| labels::field(lang, name);
    let mut rows = vec![
        (
            f("vehicle"),
            format!(
                "{} ({})",
                a.vehicle_id,
                labels::kind(lang, a.vehicle_kind.as_str())
            ),
        ),
        (f("rule"), labels::rule(lang, &a.rule).to_owned()),
        (
            f("severity"),
            labels::severity(lang, a.severity.as_str()).to_owned(),
        ),
    ];
    if let Some(p) = place(ev) {
        rows.push((f("place"), p));
    }
    if let Some(z) = &a.zone {
        rows.push((f("zone"), z.clone()));
    }
    if let Some(z) = nearest_zone(ev) {
        rows.push((f("nearest_zone"), z));
    }
    rows.push((f("time"), ev.at.format("%Y-%m-%d %H:%M:%S UTC").to_string()));
    rows.into_iter()
        .map(|(k, v)| match format {
            Format::Feishu => format!("{k}: {v}"),
            Format::Slack => format!("• {k}: {}", slack_escape(&v)),
            _ => format!("- {k}: {v}"),
        })
        .collect()
}

fn digest_line(ev: &AlertEvent, format: Format, lang: Language) -> String {
    let a = &ev.alert;
    let mut s = format!(
        "{} #{} {} {} {}",
        labels::event(lang, ev.event_type.as_str()),
        a.id,
        a.vehicle_id,
        labels::rule(lang, &a.rule),
        labels::severity(lang, a.severity.as_str())
    );
    if let Some(p) = place(ev) {
        s.push_str(&format!(" @ {p}"));
    }
    match format {
        Format::Feishu => s,
        Format::Slack => format!("• {}", slack_escape(&s)),
        _ => format!("- {s}"),
    }
}

fn alert_link(ctx: &Context, alert_id: i64) -> String {
    format!(
        "{}/#/alerts/{alert_id}",
        ctx.dashboard_url.trim_end_matches('/')
    )
}

fn link(format: Format, url: &str, text: &str) -> String {
    match format {
        Format::Slack => format!("<{url}|{text}>"),
        Format::Feishu => format!("{text}: {url}"),
        _ => format!("\n[{text}]({url})"),
    }
}

/// Slack reads `&`, `<` and `>` as markup.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - "…".len();
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests;
