//! Records to store: a bilateral agreement to start from, requests around it,
//! and generated datasets of agreements and engagements over a list of states.

use cooperation_registry::pb::cooperation::v1::{self as v1, agreement, engagement};
use cooperation_registry::pb::google::r#type::Date;

pub fn date(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

/// A valid bilateral agreement between India and Japan.
pub fn agreement(title: &str) -> v1::Agreement {
    v1::Agreement {
        title: title.into(),
        parties: vec!["parties/ind".into(), "parties/jpn".into()],
        signature_date: date(2020, 9, 10),
        ..Default::default()
    }
}

pub fn create_agreement(id: &str, agreement: v1::Agreement) -> v1::CreateAgreementRequest {
    v1::CreateAgreementRequest { agreement_id: id.into(), agreement: Some(agreement), request_id: String::new() }
}

/// An UpdateAgreement request for `agreement` with `update_mask`.
pub fn update_request(
    agreement: v1::Agreement,
    update_mask: Option<prost_types::FieldMask>,
) -> v1::UpdateAgreementRequest {
    v1::UpdateAgreementRequest { agreement: Some(agreement), update_mask, request_id: String::new() }
}

/// The states of the benches' datasets (ISO 3166-1 alpha-3, seeded at the
/// first start). In a dataset of `numbered_agreement`s over them each is a
/// party to 1 in 20 agreements.
pub const STATES: [&str; 40] = [
    "ind", "jpn", "usa", "aus", "fra", "deu", "gbr", "can", "bra", "zaf", "idn", "vnm", "phl", "sgp", "mys", "tha",
    "kor", "nzl", "ita", "esp", "nld", "bel", "pol", "swe", "nor", "fin", "dnk", "mex", "arg", "chl", "egy", "nga",
    "ken", "sau", "are", "isr", "tur", "pak", "bgd", "lka",
];

/// The two parties of record `i` of a dataset over `states`: the `i`th state
/// (cycling) and the one at `i × stride + offset`, or at `i + step` where that
/// is the same state.
fn pair<'a>(i: usize, states: &[&'a str], stride: usize, offset: usize, step: usize) -> (&'a str, &'a str) {
    let a = states[i % states.len()];
    let b = states[(i * stride + offset) % states.len()];
    let b = if a == b { states[(i + step) % states.len()] } else { b };
    (a, b)
}

/// The id of agreement `i` of a dataset: `a0000000` on.
pub fn agreement_id(i: usize) -> String {
    format!("a{i:07}")
}

/// The id of engagement `i` of a dataset: `e0000000` on.
pub fn engagement_id(i: usize) -> String {
    format!("e{i:07}")
}

/// Agreement `i` of a dataset over `states`, like the seed article's: two
/// parties (`pair`: the state at `i` and the one at `7i + 3`, so each state is
/// a party with two others), signatories, dates, a ten-year term, three
/// provisions, a description and a label.
pub fn numbered_agreement(i: usize, states: &[&str]) -> v1::Agreement {
    let (a, b) = pair(i, states, 7, 3, 1);
    let year = 1990 + (i % 35) as i32;
    v1::Agreement {
        title: format!("Agreement {i} between {a} and {b} concerning reciprocal provision of supplies and services"),
        parties: vec![format!("parties/{a}"), format!("parties/{b}")],
        instrument_type: 1 + (i % 5) as i32,
        signatories: vec![
            agreement::Signatory {
                person: "Ajay Kumar".into(),
                post: "Defence Secretary".into(),
                party: format!("parties/{a}"),
                ..Default::default()
            },
            agreement::Signatory {
                person: "Suzuki Satoshi".into(),
                post: "Ambassador".into(),
                party: format!("parties/{b}"),
                ..Default::default()
            },
        ],
        signature_date: date(year, 1 + (i % 12) as i32, 1 + (i % 28) as i32),
        entry_into_force_date: date(year + 1, 1, 1),
        term: Some(agreement::Term { years: 10, ..Default::default() }),
        provisions: (0..3)
            .map(|p| agreement::Provision {
                category: 1 + ((i + p) % 20) as i32,
                summary: "food, water, billeting, transportation, petroleum, clothing, repair and maintenance".into(),
                reciprocal: true,
                ..Default::default()
            })
            .collect(),
        description: "A bilateral agreement recorded for the service benchmark, with the fields a treaty \
                      database would hold for it."
            .into(),
        labels: [("source".to_string(), "bench".to_string())].into(),
        ..Default::default()
    }
}

/// Engagement `i` of a dataset over `states`: a bilateral meeting.
pub fn numbered_engagement(i: usize, states: &[&str]) -> v1::Engagement {
    let (a, b) = pair(i, states, 3, 1, 2);
    v1::Engagement {
        title: format!("Meeting {i} of {a} and {b}"),
        kind: 1 + (i % 4) as i32,
        participants: vec![
            engagement::Participant { party: format!("parties/{a}"), ..Default::default() },
            engagement::Participant { party: format!("parties/{b}"), ..Default::default() },
        ],
        start_date: date(2000 + (i % 25) as i32, 1 + (i % 12) as i32, 1 + (i % 28) as i32),
        ..Default::default()
    }
}
