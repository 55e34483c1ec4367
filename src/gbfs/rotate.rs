//! Public vehicle ids. GBFS asks that a vehicle's id be rotated to a new random string after
//! each trip, so that nobody can follow one bike (and its riders) through the day from the
//! public feed. The public id is a keyed hash of the fleet id and the end of the vehicle's last
//! ride: stable while it stands parked, new after every ride, and unlinkable to the fleet id or
//! to the previous public id without the secret.

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub struct IdRotation {
    secret: Vec<u8>,
}

impl IdRotation {
    pub fn new(secret: &[u8]) -> Self {
        IdRotation {
            secret: secret.to_vec(),
        }
    }

    /// A secret from the operating system's randomness, for a process without a configured one.
    pub fn random() -> Self {
        let mut s = uuid::Uuid::new_v4().as_bytes().to_vec();
        s.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        IdRotation { secret: s }
    }

    /// `cycle` marks the vehicle's current lock cycle: the end of its last ride (none yet: the
    /// first cycle).
    pub fn public_id(&self, fleet_id: &str, cycle: Option<DateTime<Utc>>) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(fleet_id.as_bytes());
        mac.update(&[0]);
        let marker = cycle.map_or(i64::MIN, |t| t.timestamp_micros());
        mac.update(&marker.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        // 96 bits: collisions within a fleet are out of reach, the id stays short.
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn stable_within_a_cycle_new_after_each_ride_and_unlinkable() {
        let r = IdRotation::new(b"0123456789abcdef");
        let t1 = Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap();
        let t2 = Utc.with_ymd_and_hms(2024, 5, 1, 9, 30, 0).unwrap();
        let a = r.public_id("XY-B0001", Some(t1));
        assert_eq!(a, r.public_id("XY-B0001", Some(t1)));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("B0001"));
        assert_ne!(a, r.public_id("XY-B0001", Some(t2)));
        assert_ne!(a, r.public_id("XY-B0001", None));
        assert_ne!(a, r.public_id("XY-B0002", Some(t1)));
        // Another secret, other ids: the fleet id cannot be recovered by hashing guesses.
        assert_ne!(
            a,
            IdRotation::new(b"fedcba9876543210").public_id("XY-B0001", Some(t1))
        );
        assert_ne!(
            IdRotation::random().public_id("XY-B0001", None),
            IdRotation::random().public_id("XY-B0001", None)
        );
    }
}
