//! Upload identifiers: creation, signing and verification.
//!
//! An identifier names one upload. It travels in the `X-Progress-ID` query
//! parameter (or header) and, once verified, names the upload's folder in
//! the pool. Verification is therefore the only gate between a request and
//! a path on disk: nothing that fails [`verify_identifier`] ever reaches the
//! file system. (The Python original compiled a regular expression for this
//! and never applied it.)
//!
//! Without a key an identifier is a UUID v4. With a key it is
//! `<uuid>:<hex HMAC-SHA256(key, uuid)>`, so only holders of the key (the
//! application, through the CLI or the library) can mint identifiers the
//! server will accept.
//!
//! A signed identifier may also carry an upload policy
//! ([`crate::policy`]): `<name>.<policy>:<hex HMAC-SHA256(key,
//! name.policy)>`. The name alone still names the folder; the signature
//! covers the policy too, so a changed policy is a wrong signature. Only a
//! signed identifier can carry one: without a key anyone could write any
//! policy, so a server without a key refuses a policy identifier.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error_code::ErrorCode;
use crate::policy::{MAX_POLICY_TEXT, Policy, PolicyError};

/// Longest accepted name part (before the `:`).
pub const MAX_NAME_LEN: usize = 64;
/// Length of the hex signature after the `:`.
const SIGNATURE_HEX_LEN: usize = 64;
/// Longest identifier accepted anywhere (a query, a header, a URL path, a
/// status document): a name, a policy and a signature: 374 bytes,
/// well inside what web servers allow in a request line or header.
pub const MAX_IDENTIFIER_LEN: usize = MAX_NAME_LEN + 1 + MAX_POLICY_TEXT + 1 + SIGNATURE_HEX_LEN;

/// The secret that signs identifiers.
///
/// Its `Debug` output is redacted so that the key cannot reach a log through
/// a `{:?}` of a configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// Wraps key bytes. An empty key would sign with nothing, so it is refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Key> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            None
        } else {
            Some(Key(bytes))
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// An identifier that passed [`verify_identifier`] (or was made by
/// [`create_identifier`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identifier {
    text: String,
    name_len: usize,
    policy: Option<Policy>,
}

impl Identifier {
    /// The identifier as the client sends it, signature included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The unsigned part: the name of the upload's folder in the pool.
    /// Only `[A-Za-z0-9-]`, 1 to 64 characters.
    pub fn name(&self) -> &str {
        &self.text[..self.name_len]
    }

    /// The upload policy the identifier carries (signed with it), if any.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why an identifier was refused. Each variant maps to one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "malformed upload identifier: expected 1 to 64 letters, digits or '-', \
         optionally followed by ':' and a 64-digit lowercase hex signature"
    )]
    Malformed,
    #[error("upload identifier is not signed, and this server only accepts signed identifiers")]
    Unsigned,
    #[error("upload identifier is signed, but this server has no upload key to check it with")]
    UnexpectedSignature,
    #[error("upload identifier signature does not match")]
    BadSignature,
    #[error(
        "upload identifier carries an upload policy but this server has no upload key: \
         a policy only means something when it is signed"
    )]
    PolicyWithoutKey,
    #[error("upload identifier carries an upload policy but no signature")]
    UnsignedPolicy,
    #[error("upload identifier's policy is unreadable: {0}")]
    BadPolicy(PolicyError),
}

impl IdError {
    /// The stable error code; the mapping is in [`crate::error_code`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from(self)
    }

    /// The HTTP status a request with this identifier is answered with:
    /// 403 when the signature is wrong or missing, 400 when the text itself
    /// is (the status of its [`code`](IdError::code)).
    pub fn http_status(&self) -> u16 {
        self.code().status()
    }
}

/// Makes a fresh identifier: 128 random bits as a UUID v4, signed when a key
/// is given.
///
/// ```
/// use fileupload::identifier::{create_identifier, verify_identifier, Key};
///
/// let key = Key::new(*b"secret").unwrap();
/// let id = create_identifier(Some(&key)).unwrap();
/// assert_eq!(id.as_str().len(), 36 + 1 + 64);
/// assert_eq!(verify_identifier(id.as_str(), Some(&key)), Ok(id.clone()));
/// // Refused without the key, and under another one.
/// assert!(verify_identifier(id.as_str(), None).is_err());
/// assert!(verify_identifier(id.as_str(), Key::new(*b"other").as_ref()).is_err());
/// ```
pub fn create_identifier(key: Option<&Key>) -> Result<Identifier, getrandom::Error> {
    let name = random_name()?;
    let name_len = name.len();
    let text = match key {
        Some(key) => sign(key, name),
        None => name,
    };
    Ok(Identifier {
        text,
        name_len,
        policy: None,
    })
}

/// Why an identifier with a policy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("no randomness for a new identifier: {0}")]
    Random(getrandom::Error),
    #[error("{0}")]
    Policy(PolicyError),
}

/// Makes a fresh identifier that carries `policy`, signed with `key` (a
/// policy is only ever signed: see the module's documentation).
///
/// ```
/// use fileupload::identifier::{create_identifier_with_policy, verify_identifier, Key};
/// use fileupload::policy::Policy;
///
/// let key = Key::new(*b"secret").unwrap();
/// let policy = Policy { size_limit: Some(1 << 20), file_limit: Some(1), ..Policy::default() };
/// let id = create_identifier_with_policy(&key, &policy).unwrap();
/// let verified = verify_identifier(id.as_str(), Some(&key)).unwrap();
/// assert_eq!(verified.policy(), Some(&policy));
/// assert_eq!(verified.name().len(), 36);
/// ```
pub fn create_identifier_with_policy(
    key: &Key,
    policy: &Policy,
) -> Result<Identifier, CreateError> {
    let encoded = policy.encode().map_err(CreateError::Policy)?;
    let name = random_name().map_err(CreateError::Random)?;
    let name_len = name.len();
    let text = sign(key, format!("{name}.{encoded}"));
    Ok(Identifier {
        text,
        name_len,
        policy: Some(policy.clone()),
    })
}

/// 128 random bits as a UUID v4.
fn random_name() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let digits = hex(&bytes);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &digits[0..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..32]
    ))
}

/// `signed` followed by `:` and its HMAC.
fn sign(key: &Key, mut signed: String) -> String {
    let mut mac = key.mac();
    mac.update(signed.as_bytes());
    let signature = hex(&mac.finalize().into_bytes());
    signed.push(':');
    signed.push_str(&signature);
    signed
}

/// Checks an identifier's form and signature.
///
/// The whole text must match `^[A-Za-z0-9-]{1,64}(:[0-9a-f]{64})?$`, or
/// `^[A-Za-z0-9-]{1,64}\.[A-Za-z0-9_-]{1,N}:[0-9a-f]{64}$` with a policy
/// (N is [`MAX_POLICY_TEXT`]). With a
/// key, the signature is required and compared in constant time; without
/// one, a signed identifier is refused (it was meant for another server).
///
/// ```
/// use fileupload::identifier::{verify_identifier, IdError};
///
/// assert!(verify_identifier("my-upload-1", None).is_ok());
/// assert_eq!(verify_identifier("../etc", None), Err(IdError::Malformed));
/// ```
pub fn verify_identifier(text: &str, key: Option<&Key>) -> Result<Identifier, IdError> {
    if text.len() > MAX_IDENTIFIER_LEN {
        return Err(IdError::Malformed);
    }
    let (signed, signature) = match text.split_once(':') {
        Some((signed, signature)) => (signed, Some(signature)),
        None => (text, None),
    };
    let (name, policy_text) = match signed.split_once('.') {
        Some((name, policy)) => (name, Some(policy)),
        None => (signed, None),
    };
    if !is_valid_name(name) {
        return Err(IdError::Malformed);
    }
    if let Some(policy) = policy_text
        && (policy.is_empty()
            || policy.len() > MAX_POLICY_TEXT
            || !policy
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(IdError::Malformed);
    }
    let mut identifier = Identifier {
        text: text.to_owned(),
        name_len: name.len(),
        policy: None,
    };
    match (signature, key, policy_text) {
        (None, None, Some(_)) => Err(IdError::PolicyWithoutKey),
        (None, Some(_), Some(_)) => Err(IdError::UnsignedPolicy),
        (None, None, None) => Ok(identifier),
        (None, Some(_), None) => Err(IdError::Unsigned),
        (Some(signature), key, policy_text) => {
            let tag = decode_signature(signature).ok_or(IdError::Malformed)?;
            let key = match (key, policy_text) {
                (Some(key), _) => key,
                (None, Some(_)) => return Err(IdError::PolicyWithoutKey),
                (None, None) => return Err(IdError::UnexpectedSignature),
            };
            let mut mac = key.mac();
            mac.update(signed.as_bytes());
            mac.verify_slice(&tag).map_err(|_| IdError::BadSignature)?;
            // Decoded only once the signature holds: the bytes are the
            // application's, not a client's.
            if let Some(policy_text) = policy_text {
                identifier.policy = Some(Policy::decode(policy_text).map_err(IdError::BadPolicy)?);
            }
            Ok(identifier)
        }
    }
}

/// Whether `name` may be the unsigned part of an identifier, and so the
/// name of a bucket: 1 to 64 of `[A-Za-z0-9-]`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Decodes exactly 64 lowercase hex digits.
fn decode_signature(text: &str) -> Option<[u8; 32]> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() != SIGNATURE_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex, used for identifiers and SHA-256 digests alike.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &[u8]) -> Key {
        Key::new(k).unwrap()
    }

    #[test]
    fn new_identifiers_are_uuid_v4_and_unique() {
        let a = create_identifier(None).unwrap();
        let b = create_identifier(None).unwrap();
        assert_ne!(a, b);
        let text = a.as_str();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version nibble in {text}");
        assert!("89ab".contains(&text[19..20]), "variant nibble in {text}");
        assert_eq!(
            text.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>(),
            [8, 13, 18, 23]
        );
        assert_eq!(verify_identifier(text, None), Ok(a.clone()));
        assert_eq!(a.name(), text);
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_name() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        // does not fit our alphabet, so check against a value computed with
        // Python's hmac module instead:
        // hmac.new(b"key", b"abc", hashlib.sha256).hexdigest()
        let id = format!(
            "abc:{}",
            "9c196e32dc0175f86f4b1cb89289d6619de6bee699e4c378e68309ed97a1a6ab"
        );
        let verified = verify_identifier(&id, Some(&key(b"key"))).unwrap();
        assert_eq!(verified.name(), "abc");
        assert_eq!(verified.as_str(), id);
    }

    #[test]
    fn refusals() {
        let k = key(b"k1");
        let signed = create_identifier(Some(&k)).unwrap();
        let unsigned = create_identifier(None).unwrap();
        let cases: &[(&str, Option<&Key>, IdError)] = &[
            ("", None, IdError::Malformed),
            ("../x", None, IdError::Malformed),
            ("a/b", None, IdError::Malformed),
            ("a\0b", None, IdError::Malformed),
            ("..", None, IdError::Malformed),
            ("%2e%2e", None, IdError::Malformed),
            ("a b", None, IdError::Malformed),
            ("é", None, IdError::Malformed),
            (":", None, IdError::Malformed),
            ("abc:", None, IdError::Malformed),
            ("abc:xyz", Some(&k), IdError::Malformed),
            (unsigned.as_str(), Some(&k), IdError::Unsigned),
            (signed.as_str(), None, IdError::UnexpectedSignature),
        ];
        for (text, key, expected) in cases {
            assert_eq!(
                verify_identifier(text, *key).as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
        let long = "a".repeat(65);
        assert_eq!(verify_identifier(&long, None), Err(IdError::Malformed));
        assert!(verify_identifier(&"a".repeat(64), None).is_ok());
        // Uppercase hex is not the canonical form we issue.
        let upper = format!(
            "{}:{}",
            signed.name(),
            &signed.as_str()[37..].to_uppercase()
        );
        assert_eq!(verify_identifier(&upper, Some(&k)), Err(IdError::Malformed));
        // Another key's signature, and a signature moved to another name.
        let other = key(b"k2");
        assert_eq!(
            verify_identifier(signed.as_str(), Some(&other)),
            Err(IdError::BadSignature)
        );
        let moved = format!("other-name{}", &signed.as_str()[36..]);
        assert_eq!(
            verify_identifier(&moved, Some(&k)),
            Err(IdError::BadSignature)
        );
    }

    fn full_policy() -> Policy {
        Policy {
            expires: Some(1_900_000_000),
            size_limit: Some(100 << 20),
            accept: vec!["image/*".into(), "application/pdf".into()],
            file_limit: Some(3),
        }
    }

    #[test]
    fn a_policy_round_trips_inside_a_signed_identifier() {
        let k = key(b"k1");
        let id = create_identifier_with_policy(&k, &full_policy()).unwrap();
        let text = id.as_str();
        assert!(text.len() <= MAX_IDENTIFIER_LEN, "{} bytes", text.len());
        // The bound README states.
        assert_eq!(MAX_IDENTIFIER_LEN, 374);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "{text}"
        );
        let verified = verify_identifier(text, Some(&k)).unwrap();
        assert_eq!(verified, id);
        assert_eq!(verified.policy(), Some(&full_policy()));
        // The folder is the name alone, a UUID as for any new identifier.
        assert_eq!(verified.name().len(), 36);
        assert_eq!(&text[..36], verified.name());
        assert_eq!(&text[36..37], ".");
        // Plain identifiers carry none.
        let plain = create_identifier(Some(&k)).unwrap();
        assert_eq!(
            verify_identifier(plain.as_str(), Some(&k))
                .unwrap()
                .policy(),
            None
        );
        assert_eq!(verify_identifier("abc", None).unwrap().policy(), None);
    }

    #[test]
    fn a_tampered_policy_is_a_wrong_signature() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let k = key(b"k1");
        let id = create_identifier_with_policy(&k, &full_policy()).unwrap();
        let (signed, signature) = id.as_str().split_once(':').unwrap();
        let (name, _) = signed.split_once('.').unwrap();
        // Each field loosened in turn, re-encoded canonically, under the
        // old signature.
        let loosen: [fn(&mut Policy); 5] = [
            |p| p.expires = Some(u64::MAX),
            |p| p.expires = None,
            |p| p.size_limit = Some(u64::MAX),
            |p| p.accept = vec!["*/*".into()],
            |p| p.file_limit = Some(1000),
        ];
        for change in loosen {
            let mut policy = full_policy();
            change(&mut policy);
            let forged = format!("{name}.{}:{signature}", policy.encode().unwrap());
            assert_eq!(
                verify_identifier(&forged, Some(&k)),
                Err(IdError::BadSignature),
                "{policy:?}"
            );
        }
        // The policy dropped, or moved to another name.
        assert_eq!(
            verify_identifier(&format!("{name}:{signature}"), Some(&k)),
            Err(IdError::BadSignature)
        );
        let moved = format!("other{}", &id.as_str()[36..]);
        assert_eq!(
            verify_identifier(&moved, Some(&k)),
            Err(IdError::BadSignature)
        );
        // A byte flipped inside the base64.
        let bytes = URL_SAFE_NO_PAD.decode(&signed[37..]).unwrap();
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            let forged = format!("{name}.{}:{signature}", URL_SAFE_NO_PAD.encode(&flipped));
            assert_eq!(
                verify_identifier(&forged, Some(&k)),
                Err(IdError::BadSignature)
            );
        }
        // Another key.
        assert_eq!(
            verify_identifier(id.as_str(), Some(&key(b"k2"))),
            Err(IdError::BadSignature)
        );
    }

    #[test]
    fn any_one_character_changed_is_refused() {
        let k = key(b"k1");
        let id = create_identifier_with_policy(&k, &full_policy()).unwrap();
        let text = id.as_str();
        for (i, c) in text.char_indices() {
            for replacement in ['A', '0', '-', '_', '.', ':'] {
                if replacement == c {
                    continue;
                }
                let mut changed = text.to_owned();
                changed.replace_range(i..i + 1, &replacement.to_string());
                assert!(
                    verify_identifier(&changed, Some(&k)).is_err(),
                    "{changed} accepted"
                );
            }
        }
    }

    #[test]
    fn a_policy_needs_a_signature_and_a_key() {
        let k = key(b"k1");
        let id = create_identifier_with_policy(&k, &full_policy()).unwrap();
        let unsigned = id.as_str().split_once(':').unwrap().0;
        assert_eq!(
            verify_identifier(unsigned, Some(&k)),
            Err(IdError::UnsignedPolicy)
        );
        assert_eq!(
            verify_identifier(unsigned, None),
            Err(IdError::PolicyWithoutKey)
        );
        assert_eq!(
            verify_identifier(id.as_str(), None),
            Err(IdError::PolicyWithoutKey)
        );
        assert_eq!(IdError::UnsignedPolicy.http_status(), 403);
        assert_eq!(IdError::PolicyWithoutKey.http_status(), 400);
    }

    #[test]
    fn malformed_and_too_long_policy_identifiers() {
        let k = key(b"k1");
        let sig = "0".repeat(64);
        for text in [
            format!("abc.:{sig}"),
            format!("abc.a+b:{sig}"),
            format!("abc.a/b:{sig}"),
            format!("abc.a.b:{sig}"),
            format!("abc.a=:{sig}"),
            format!(".AQA:{sig}"),
            format!("abc.{}:{sig}", "A".repeat(MAX_POLICY_TEXT + 1)),
            "a".repeat(MAX_IDENTIFIER_LEN + 1),
        ] {
            assert_eq!(
                verify_identifier(&text, Some(&k)),
                Err(IdError::Malformed),
                "{text}"
            );
        }
        // A policy the signature holds for but that does not decode (an
        // unknown version) is refused as unreadable, never guessed at.
        let forged = sign(&k, "abc.AgA".to_owned());
        assert!(matches!(
            verify_identifier(&forged, Some(&k)),
            Err(IdError::BadPolicy(_))
        ));
        assert_eq!(IdError::BadPolicy(PolicyError::Base64).http_status(), 400);
    }

    #[test]
    fn key_is_redacted_in_debug() {
        assert_eq!(format!("{:?}", key(b"hunter2")), "Key(<redacted>)");
        assert!(Key::new(Vec::new()).is_none());
    }
}
