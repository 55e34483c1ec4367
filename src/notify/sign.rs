//! The signing schemes: Standard Webhooks, DingTalk 加签 and Feishu. DingTalk and Feishu sign
//! the same string `"{ts}\n{secret}"` with key and message swapped; keeping both here, side by
//! side, is what keeps them from being confused.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

fn hmac_sha256_b64(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
pub fn standard_webhooks(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut content = format!("{id}.{timestamp_s}.").into_bytes();
    content.extend_from_slice(body);
    format!("v1,{}", hmac_sha256_b64(key, &content))
}

/// DingTalk: key = secret, message = `"{ts_ms}\n{secret}"`; the caller URL-encodes it.
pub fn dingtalk(secret: &str, timestamp_ms: i64) -> String {
    hmac_sha256_b64(
        secret.as_bytes(),
        format!("{timestamp_ms}\n{secret}").as_bytes(),
    )
}

/// Feishu: key = `"{ts_s}\n{secret}"`, message empty.
pub fn feishu(secret: &str, timestamp_s: i64) -> String {
    hmac_sha256_b64(format!("{timestamp_s}\n{secret}").as_bytes(), b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_matches_the_specification_example() {
        // The example of the Standard Webhooks reference libraries.
        let key = crate::notify::secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_webhooks(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn dingtalk_and_feishu_differ_by_the_swap() {
        let (ts, secret) = (1_700_000_000_000i64, "SECdemo");
        let d = dingtalk(secret, ts);
        let swapped = hmac_sha256_b64(format!("{ts}\n{secret}").as_bytes(), b"");
        assert_ne!(d, swapped);
        assert_eq!(feishu(secret, ts), swapped);
        assert_eq!(d.len(), 44);
    }
}
