//! Page tokens come back from clients: any string is either refused or
//! decodes to a cursor, and the cursor's bytes either parse or are refused.
#![no_main]

use cooperation_registry::registry::{order, paging};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    for fingerprint in [0, 0x5eed, u64::MAX] {
        if let Ok(Some(bytes)) = paging::decode(token, fingerprint) {
            for keys in 0..4 {
                let _ = order::decode_cursor(&bytes, keys);
            }
        }
    }
    // Raw cursor bytes too, as if a token had been forged with the right fingerprint.
    for keys in 0..4 {
        let _ = order::decode_cursor(data, keys);
    }
    // A token made from these bytes round-trips.
    let token = paging::encode(0x5eed, data);
    assert_eq!(paging::decode(&token, 0x5eed).unwrap().as_deref(), Some(data));
});
