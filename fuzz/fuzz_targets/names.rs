//! Resource names: any string is either a name of exactly the kind its
//! collection says, whose id rebuilds the same name, or refused.
#![no_main]

use cooperation_registry::registry::resource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    let kind = resource::kind_of_name(name);
    for candidate in resource::KINDS {
        if let Ok(id) = candidate.parse_name(name) {
            assert_eq!(candidate.name_of(id), name);
            assert!(kind.is_some_and(|k| k.collection == candidate.collection), "{name} parsed as another kind");
        }
    }
});
