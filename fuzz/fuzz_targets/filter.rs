//! AIP-160 filters: any text either compiles or gives an error naming a
//! position; a compiled filter evaluates on records and is planned against the
//! indexes without panicking.
#![no_main]

use cooperation_registry::pb::cooperation::v1::{Agreement, Engagement};
use cooperation_registry::registry::filter::Filter;
use cooperation_registry::registry::{Resource, index};
use cooperation_registry::store::memory::MemoryStore;
use libfuzzer_sys::fuzz_target;
use prost_reflect::ReflectMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let store = MemoryStore::new();
    let agreement = Agreement {
        name: "agreements/rpss".into(),
        title: "Reciprocal Provision of Supplies and Services".into(),
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        labels: [("topic".to_string(), "logistics".to_string())].into(),
        ..Default::default()
    };
    let cases = [
        (agreement.transcode_to_dynamic(), Agreement::KIND),
        (Engagement::default().transcode_to_dynamic(), Engagement::KIND),
    ];
    for (record, kind) in cases {
        match Filter::compile(text, &record.descriptor()) {
            Ok(filter) => {
                let _ = filter.matches(&record);
                let _ = index::candidates(&store, kind, &filter);
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
});
