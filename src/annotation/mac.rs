//! MAC addresses as the `ifMac` field of a network selection carries them.
//!
//! The value ends up in `CNI_ARGS` (`K8S_POD_IFMAC=`) and on a real interface, so it is parsed
//! strictly here, once: six colon-separated octets, unicast and not all-zero (the kernel refuses
//! both for an Ethernet interface). It is always shown in lower case, so `00:AA:..` and `00:aa:..`
//! compare equal and a case-only edit of the annotation does not re-plug anything.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A unicast, non-zero, 48-bit MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

/// Why a string is not an acceptable interface MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("{value} is not a MAC address of the form 00:11:22:33:44:55")]
    Syntax { value: String },
    #[error("{value} is a multicast address; an interface needs a unicast MAC")]
    Multicast { value: String },
    #[error("{value} is the all-zero MAC address")]
    Zero { value: String },
}

impl MacAddr {
    /// The six octets, most significant first.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax {
            value: crate::names::quoted(text),
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            // from_str_radix alone would accept "+f" or "f"; insist on two hex digits.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        let mac = MacAddr(octets);
        if octets[0] & 0x01 != 0 {
            return Err(MacError::Multicast {
                value: mac.to_string(),
            });
        }
        if octets == [0; 6] {
            return Err(MacError::Zero {
                value: mac.to_string(),
            });
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises_to_lower_case() {
        let mac: MacAddr = "00:AA:bb:0C:dd:EF".parse().unwrap();
        assert_eq!(mac.octets(), [0x00, 0xaa, 0xbb, 0x0c, 0xdd, 0xef]);
        assert_eq!(mac.to_string(), "00:aa:bb:0c:dd:ef");
    }

    #[test]
    fn locally_administered_unicast_is_accepted() {
        assert!("02:00:00:00:00:01".parse::<MacAddr>().is_ok());
    }

    #[test]
    fn malformed_addresses_are_syntax_errors() {
        for bad in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "00-11-22-33-44-55",
            "0011.2233.4455",
            "0:11:22:33:44:55",
            "000:11:22:33:44:55",
            "+0:11:22:33:44:55",
            "00:11:22:33:44:5g",
            "00:11:22:33:44:55:",
            " 00:11:22:33:44:55",
            "00:11:22:33:44:é5",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax { .. })),
                "{bad:?} should be a syntax error"
            );
        }
    }

    #[test]
    fn multicast_and_broadcast_are_refused() {
        for bad in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "33:33:00:00:00:01",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Multicast { .. })),
                "{bad:?} should be refused as multicast"
            );
        }
    }

    #[test]
    fn all_zero_is_refused() {
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacError::Zero {
                value: "00:00:00:00:00:00".into()
            })
        );
    }

    #[test]
    fn serde_round_trips_as_a_lower_case_string() {
        let mac: MacAddr = "0A:0B:0C:0D:0E:0F".parse().unwrap();
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"0a:0b:0c:0d:0e:0f\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"ff:ff:ff:ff:ff:ff\"").is_err());
    }
}
