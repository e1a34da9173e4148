//! OpenSSH public key lines (`ssh_host_*_key.pub`): type, size and fingerprint, computed exactly as
//! `ssh-keygen -lf` prints them, without calling it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// What `ssh-keygen -lf` shows about a public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The wire name, e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`.
    pub key_type: String,
    pub bits: u32,
    /// `SHA256:` + unpadded base64 of the SHA-256 of the key blob.
    pub fingerprint: String,
    pub comment: String,
}

impl PublicKey {
    /// The short name `ssh-keygen -l` prints in parentheses (`ED25519`, `ECDSA`, `RSA`, `DSA`).
    pub fn short_type(&self) -> &'static str {
        short_type(&self.key_type)
    }
}

fn short_type(key_type: &str) -> &'static str {
    match key_type {
        "ssh-ed25519" => "ED25519",
        "ssh-rsa" => "RSA",
        "ssh-dss" => "DSA",
        "sk-ssh-ed25519@openssh.com" => "ED25519-SK",
        "sk-ecdsa-sha2-nistp256@openssh.com" => "ECDSA-SK",
        t if t.starts_with("ecdsa-sha2-") => "ECDSA",
        _ => "UNKNOWN",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error("parsing public key: expected \"TYPE BASE64 [COMMENT]\"")]
    Shape,
    #[error("parsing public key: key data is not base64")]
    Base64,
    #[error("parsing public key: key data is truncated or malformed ({0})")]
    Blob(&'static str),
    #[error("parsing public key: line says {line:?} but the key data says {blob:?}")]
    TypeMismatch { line: String, blob: String },
    #[error("parsing public key: unsupported key type {0:?}")]
    Unsupported(String),
}

/// Parses one `TYPE BASE64 [COMMENT]` line (the first non-comment line of the text).
pub fn parse(text: &str) -> Result<PublicKey, HostKeyError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or(HostKeyError::Shape)?;
    let mut parts = line.splitn(3, char::is_whitespace);
    let key_type = parts.next().ok_or(HostKeyError::Shape)?;
    let data = parts.next().ok_or(HostKeyError::Shape)?;
    let comment = parts.next().unwrap_or("").trim();
    let blob = STANDARD.decode(data).map_err(|_| HostKeyError::Base64)?;

    let mut r = Reader(&blob);
    let blob_type =
        std::str::from_utf8(r.string()?).map_err(|_| HostKeyError::Blob("type name"))?;
    if blob_type != key_type {
        return Err(HostKeyError::TypeMismatch {
            line: key_type.to_string(),
            blob: blob_type.to_string(),
        });
    }
    let bits = match key_type {
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" => {
            if r.string()?.len() != 32 {
                return Err(HostKeyError::Blob("ed25519 key is not 32 bytes"));
            }
            256
        }
        t if t.starts_with("ecdsa-sha2-") || t == "sk-ecdsa-sha2-nistp256@openssh.com" => {
            match r.string()? {
                b"nistp256" => 256,
                b"nistp384" => 384,
                b"nistp521" => 521,
                _ => return Err(HostKeyError::Unsupported(key_type.to_string())),
            }
        }
        "ssh-rsa" => {
            let _e = r.string()?;
            mpint_bits(r.string()?)
        }
        "ssh-dss" => mpint_bits(r.string()?),
        other => return Err(HostKeyError::Unsupported(other.to_string())),
    };
    Ok(PublicKey {
        key_type: key_type.to_string(),
        bits,
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob))),
        comment: comment.to_string(),
    })
}

/// The bit length of an SSH `mpint` (big-endian, possibly with leading zero bytes), like
/// OpenSSL's `BN_num_bits`.
fn mpint_bits(n: &[u8]) -> u32 {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    (n.len() as u32 - 1) * 8 + (8 - n[0].leading_zeros())
}

/// Reads SSH wire-format `string`s (u32 big-endian length, then bytes).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Result<&'a [u8], HostKeyError> {
        let (len, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(HostKeyError::Blob("length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(HostKeyError::Blob("string longer than the data"));
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Makes a key with the real `ssh-keygen` and returns (its .pub text, what `ssh-keygen -lf`
    /// prints). Panics with a clear message when OpenSSH is not installed: these tests must not
    /// pass without the tool they compare against.
    fn keygen(dir: &std::path::Path, args: &[&str], name: &str) -> Option<(String, String)> {
        let key = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(args)
            .args(["-q", "-N", "", "-C", "root@test-node", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen is required for the host key tests (install openssh-client)");
        if !out.status.success() {
            return None;
        }
        let pub_path = key.with_extension("pub");
        let listed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&pub_path)
            .output()
            .expect("running ssh-keygen -lf");
        assert!(listed.status.success(), "ssh-keygen -lf failed: {listed:?}");
        Some((
            std::fs::read_to_string(&pub_path).unwrap(),
            String::from_utf8(listed.stdout).unwrap().trim().to_string(),
        ))
    }

    #[test]
    fn fingerprints_and_bits_match_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[&str], &str, bool)] = &[
            (&["-t", "ed25519"], "ed25519", true),
            (&["-t", "ecdsa", "-b", "256"], "ecdsa256", true),
            (&["-t", "ecdsa", "-b", "384"], "ecdsa384", true),
            (&["-t", "ecdsa", "-b", "521"], "ecdsa521", true),
            (&["-t", "rsa", "-b", "1024"], "rsa1024", true),
            (&["-t", "rsa", "-b", "3072"], "rsa3072", true),
            // An odd size gives a modulus whose top byte is not full.
            (&["-t", "rsa", "-b", "1028"], "rsa1028", true),
            // DSA is compiled out of recent OpenSSH; check it only where it still exists.
            (&["-t", "dsa"], "dsa", false),
        ];
        let mut checked = 0;
        for (args, name, required) in cases {
            let Some((pub_text, listed)) = keygen(dir.path(), args, name) else {
                assert!(!required, "ssh-keygen {args:?} failed");
                continue;
            };
            let key = parse(&pub_text).unwrap();
            let ours = format!(
                "{} {} {} ({})",
                key.bits,
                key.fingerprint,
                key.comment,
                key.short_type()
            );
            assert_eq!(ours, listed, "{name}");
            checked += 1;
        }
        assert!(checked >= 7);
    }

    #[test]
    fn a_known_ed25519_key() {
        // Generated once with ssh-keygen 9.2; `ssh-keygen -lf` printed:
        // 256 SHA256:Y0CKHTgDcxeXPPJb1kQapwTdYMb4e/ECrMGaS/gytJc root@image (ED25519)
        let key = parse(KNOWN).unwrap();
        assert_eq!(key.key_type, "ssh-ed25519");
        assert_eq!(key.bits, 256);
        assert_eq!(key.comment, "root@image");
        assert_eq!(key.fingerprint, KNOWN_FP);
    }

    const KNOWN: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMuCf84dp0k1fs2c+96ROhsvg2W+H9O+uv5ghSwtuKFd root@image\n";
    const KNOWN_FP: &str = "SHA256:Y0CKHTgDcxeXPPJb1kQapwTdYMb4e/ECrMGaS/gytJc";

    #[test]
    fn malformed_lines_are_rejected() {
        assert_eq!(parse("").unwrap_err(), HostKeyError::Shape);
        assert_eq!(parse("ssh-ed25519").unwrap_err(), HostKeyError::Shape);
        assert_eq!(parse("ssh-ed25519 !!!").unwrap_err(), HostKeyError::Base64);
        assert_eq!(
            parse("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIMuCf84dp0k1fs2c+96ROhsvg2W+H9O+uv5ghSwtuKFd")
                .unwrap_err(),
            HostKeyError::TypeMismatch {
                line: "ssh-rsa".into(),
                blob: "ssh-ed25519".into()
            }
        );
        // Cut short: the type string is there, the key is not.
        assert_eq!(
            parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5").unwrap_err(),
            HostKeyError::Blob("length")
        );
    }

    #[test]
    fn mpint_bit_lengths() {
        assert_eq!(mpint_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(mpint_bits(&[0x01]), 1);
        assert_eq!(mpint_bits(&[0x00, 0x00]), 0);
    }
}
