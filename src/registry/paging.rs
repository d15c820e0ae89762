//! Opaque page tokens (AIP-158) for keyset paging: the token holds a cursor (the
//! sort key and name of the last record served) and a fingerprint of the query, so a token used with a
//! different query is refused instead of giving a wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const TOKEN_VERSION: u8 = 1;

/// FNV-1a: a stable 64-bit fingerprint (std's hasher may change between builds,
/// and tokens and request fingerprints outlive a process).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A token for `query` that resumes after `cursor` (an encoding of the last
/// record served that the caller understands).
pub fn encode(query: u64, cursor: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(9 + cursor.len());
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&query.to_be_bytes());
    bytes.extend_from_slice(cursor);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The cursor to resume after, or why the token cannot be used for this query.
pub fn decode(token: &str, query: u64) -> Result<Option<Vec<u8>>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| "is not a page token this server issued".to_string())?;
    if bytes.len() < 9 || bytes[0] != TOKEN_VERSION {
        return Err("is not a page token this server issued".into());
    }
    if bytes[1..9] != query.to_be_bytes() {
        return Err(
            "was issued for a different query; send the same fields, page_size aside, as the call that returned it"
                .into(),
        );
    }
    Ok(Some(bytes[9..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let q = fingerprint(&[b"agreements", b"false"]);
        let token = encode(q, b"india-japan");
        assert_eq!(decode(&token, q), Ok(Some(b"india-japan".to_vec())));
        assert_eq!(decode("", q), Ok(None));
        assert!(decode(&token, fingerprint(&[b"agreements", b"true"])).unwrap_err().contains("different query"));
        assert!(decode("not a token!", q).is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode([9u8; 12]), q).is_err());
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
    }
}
