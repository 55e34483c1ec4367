//! The `[gbfs]` section: what the public feeds say about the system.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GbfsConfig {
    /// Absolute base URL the feeds are reached at from outside (e.g.
    /// `https://fleet.example.cn/gbfs/`); without it the discovery file builds URLs from the
    /// request's `Host` header, which is right unless a proxy rewrites it.
    pub public_url: Option<String>,
    pub system_id: String,
    pub name: String,
    pub operator: String,
    /// GBFS requires a contact address for feed consumers.
    pub feed_contact_email: String,
    /// IANA zone; the fleet runs on China Standard Time.
    pub timezone: String,
    /// BCP 47 language of every translated string in the feeds.
    pub language: String,
    /// OpenStreetMap `opening_hours` syntax.
    pub opening_hours: String,
    /// Secret that keys the rotating public vehicle ids. Unset: a random secret per process,
    /// so ids also change at every restart and differ between instances behind one balancer;
    /// set it (same value on every instance) to keep ids stable between rides.
    pub id_secret: Option<String>,
}

impl Default for GbfsConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            system_id: "hyfleet-xiaoyi".into(),
            name: "Xiaoyi hydrogen shared bikes".into(),
            operator: "Xiaoyi hydrogen fleet".into(),
            feed_contact_email: "gbfs@example.com".into(),
            timezone: "Asia/Shanghai".into(),
            language: "en".into(),
            opening_hours: "24/7".into(),
            id_secret: None,
        }
    }
}

impl GbfsConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("gbfs.{k}"), m));
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return err("public_url", format!("`{u}` is not an http(s) URL"));
        }
        if self.system_id.trim().is_empty() {
            return err("system_id", "must not be empty".into());
        }
        let (local, domain) = self.feed_contact_email.split_once('@').unwrap_or(("", ""));
        if local.is_empty() || !domain.contains('.') {
            return err(
                "feed_contact_email",
                format!("`{}` is not an email address", self.feed_contact_email),
            );
        }
        if !is_language_tag(&self.language) {
            return err(
                "language",
                format!("`{}` is not a language like `en` or `zh-CN`", self.language),
            );
        }
        if !self.timezone.contains('/') {
            return err(
                "timezone",
                format!("`{}` is not an IANA time zone", self.timezone),
            );
        }
        if matches!(&self.id_secret, Some(s) if s.len() < 16) {
            return err("id_secret", "must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// The form GBFS accepts: `^[a-z]{2,3}(-[A-Z]{2})?$`.
fn is_language_tag(s: &str) -> bool {
    let (lang, region) = match s.split_once('-') {
        Some((l, r)) => (l, Some(r)),
        None => (s, None),
    };
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        GbfsConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_option() {
        type Case = (fn(&mut GbfsConfig), &'static str);
        let cases: [Case; 5] = [
            (|c| c.language = "zh_CN".into(), "gbfs.language"),
            (
                |c| c.feed_contact_email = "nobody".into(),
                "gbfs.feed_contact_email",
            ),
            (|c| c.public_url = Some("ftp://x".into()), "gbfs.public_url"),
            (|c| c.id_secret = Some("short".into()), "gbfs.id_secret"),
            (|c| c.timezone = "CST".into(), "gbfs.timezone"),
        ];
        for (set, key) in cases {
            let mut c = GbfsConfig::default();
            set(&mut c);
            assert_eq!(c.validate().unwrap_err().0, key);
        }
        let c = GbfsConfig {
            language: "zh-CN".into(),
            ..Default::default()
        };
        c.validate().unwrap();
    }
}
