//! Human names of rules, severities, event types and vehicle kinds, in the languages operators
//! read. Chat messages use them, and the dashboard receives the same table with its
//! configuration, so a rule reads the same in a DingTalk message and on the screen.
//!
//! Keys are the contract's names (strings, not enums): a rule or event added elsewhere shows its
//! raw name until it is given a label here, instead of failing to build or to send.

use serde::{Deserialize, Serialize};

/// The language of chat messages (`notify.language`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Language {
    /// Xiaoyi's dispatchers read Chinese.
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

impl Language {
    pub const ALL: [Language; 2] = [Language::ZhCn, Language::En];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::ZhCn => "zh-CN",
            Language::En => "en",
        }
    }
}

/// `(name, zh-CN, en)`.
type Entry = (&'static str, &'static str, &'static str);

pub const RULES: &[Entry] = &[
    ("low_hydrogen", "氢量不足", "Low hydrogen"),
    ("parking_violation", "违规停车", "Parked outside the fence"),
    (
        "out_of_service_area",
        "驶出运营区域",
        "Out of the service area",
    ),
    ("overspeed", "超速", "Overspeed"),
    ("offline", "离线", "Offline"),
    (
        "h2_leak_suspected",
        "疑似氢气泄漏",
        "Suspected hydrogen leak",
    ),
    ("tank_fault", "储氢罐故障", "Tank fault"),
    ("gps_implausible", "定位异常", "Implausible GPS fix"),
    ("telemetry_gap", "遥测数据缺失", "Telemetry gap"),
];

pub const SEVERITIES: &[Entry] = &[
    ("critical", "严重", "critical"),
    ("warning", "警告", "warning"),
    ("info", "提示", "info"),
];

pub const EVENTS: &[Entry] = &[
    ("alert.opened", "新告警", "Alert opened"),
    ("alert.escalated", "告警升级", "Alert escalated"),
    ("alert.deescalated", "告警降级", "Alert de-escalated"),
    ("alert.acknowledged", "告警已确认", "Alert acknowledged"),
    ("alert.resolved", "告警已解除", "Alert resolved"),
];

pub const KINDS: &[Entry] = &[("bike", "单车", "bike"), ("bus", "公交车", "bus")];

/// The words around the values in a chat message.
pub const FIELDS: &[Entry] = &[
    ("vehicle", "车辆", "Vehicle"),
    ("rule", "规则", "Rule"),
    ("severity", "级别", "Severity"),
    ("place", "位置", "Place"),
    ("zone", "区域", "Zone"),
    ("nearest_zone", "最近停车区", "Nearest parking area"),
    ("time", "时间", "Time"),
    ("open_dashboard", "打开控制台", "Open in dashboard"),
    ("updates", "条告警更新", "alert updates"),
];

fn lookup<'a>(table: &[Entry], lang: Language, name: &'a str) -> &'a str {
    match table.iter().find(|(n, _, _)| *n == name) {
        Some((_, zh, en)) => match lang {
            Language::ZhCn => zh,
            Language::En => en,
        },
        // A custom (CEL) rule is named by its author: its name is its label.
        None => name,
    }
}

pub fn rule(lang: Language, name: &str) -> &str {
    lookup(RULES, lang, name)
}

pub fn severity(lang: Language, name: &str) -> &str {
    lookup(SEVERITIES, lang, name)
}

pub fn event(lang: Language, name: &str) -> &str {
    lookup(EVENTS, lang, name)
}

pub fn kind(lang: Language, name: &str) -> &str {
    lookup(KINDS, lang, name)
}

pub fn field(lang: Language, name: &'static str) -> &'static str {
    lookup(FIELDS, lang, name)
}

/// Every table in one language, for the dashboard:
/// `{"rules": {name: label}, "severities": …, "events": …, "kinds": …}`.
pub fn catalogue(lang: Language) -> serde_json::Value {
    let table = |t: &[Entry]| {
        t.iter()
            .map(|&(n, _, _)| (n.to_owned(), lookup(t, lang, n).into()))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "rules": table(RULES),
        "severities": table(SEVERITIES),
        "events": table(EVENTS),
        "kinds": table(KINDS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertEventType, Severity};

    #[test]
    fn every_built_in_name_has_a_label_in_each_language() {
        let rules = [
            "low_hydrogen",
            "parking_violation",
            "out_of_service_area",
            "overspeed",
            "offline",
            "h2_leak_suspected",
            "tank_fault",
            "gps_implausible",
        ];
        for lang in Language::ALL {
            for r in rules {
                assert_ne!(rule(lang, r), r, "{r} in {lang:?}");
            }
            for t in AlertEventType::ALL {
                assert_ne!(event(lang, t.as_str()), t.as_str(), "{t:?} in {lang:?}");
            }
        }
        for s in [Severity::Critical, Severity::Warning, Severity::Info] {
            assert_ne!(severity(Language::ZhCn, s.as_str()), s.as_str());
        }
        assert_eq!(rule(Language::ZhCn, "low_hydrogen"), "氢量不足");
        assert_eq!(rule(Language::En, "low_hydrogen"), "Low hydrogen");
    }

    #[test]
    fn a_custom_rule_is_shown_by_its_own_name() {
        assert_eq!(rule(Language::ZhCn, "night_ride"), "night_ride");
    }

    #[test]
    fn the_language_option_reads_as_documented() {
        #[derive(Deserialize)]
        struct T {
            l: Language,
        }
        let t: T = toml::from_str("l = \"zh-CN\"").unwrap();
        assert_eq!(t.l, Language::ZhCn);
        let t: T = toml::from_str("l = \"en\"").unwrap();
        assert_eq!(t.l, Language::En);
        assert!(toml::from_str::<T>("l = \"fr\"").is_err());
        assert_eq!(catalogue(Language::En)["rules"]["overspeed"], "Overspeed");
    }
}
