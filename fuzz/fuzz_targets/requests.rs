//! Arbitrary bytes decoded as every request type and sent through the real
//! services (validation, the registry, an in-memory store): a request either
//! decodes and gets an answer or a status, or does not decode; nothing panics.
//! The first byte picks the method.
#![no_main]

use std::sync::{Arc, OnceLock};

use cooperation_registry::api::Api;
use cooperation_registry::pb::cooperation::v1 as v1;
use cooperation_registry::pb::cooperation::v1::agreement_service_server::AgreementService;
use cooperation_registry::pb::cooperation::v1::change_service_server::ChangeService;
use cooperation_registry::pb::cooperation::v1::engagement_service_server::EngagementService;
use cooperation_registry::pb::cooperation::v1::partnership_domain_service_server::PartnershipDomainService;
use cooperation_registry::pb::cooperation::v1::party_service_server::PartyService;
use cooperation_registry::pb::cooperation::v1::relationship_service_server::RelationshipService;
use cooperation_registry::registry::Registry;
use cooperation_registry::store::memory::MemoryStore;
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct Harness {
    runtime: tokio::runtime::Runtime,
    api: Api,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let registry = runtime.block_on(Registry::open(Arc::new(MemoryStore::new()))).expect("registry opens");
        Harness { runtime, api: Api::new(Arc::new(registry), cooperation_registry::api::ScanLimits::for_calls(64)) }
    })
}

/// Decodes `bytes` as `$request` and, if it decodes, calls `$method`.
macro_rules! call {
    ($api:expr, $bytes:expr, $trait:ident :: $method:ident($request:ty)) => {{
        if let Ok(request) = <$request>::decode($bytes) {
            let _ = $trait::$method($api, tonic::Request::new(request)).await;
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let Harness { runtime, api } = harness();
    runtime.block_on(async {
        match selector % 29 {
            0 => call!(api, bytes, AgreementService::get_agreement(v1::GetAgreementRequest)),
            1 => call!(api, bytes, AgreementService::list_agreements(v1::ListAgreementsRequest)),
            2 => call!(api, bytes, AgreementService::create_agreement(v1::CreateAgreementRequest)),
            3 => call!(api, bytes, AgreementService::update_agreement(v1::UpdateAgreementRequest)),
            4 => call!(api, bytes, AgreementService::delete_agreement(v1::DeleteAgreementRequest)),
            5 => call!(api, bytes, AgreementService::undelete_agreement(v1::UndeleteAgreementRequest)),
            6 => call!(api, bytes, PartyService::get_party(v1::GetPartyRequest)),
            7 => call!(api, bytes, PartyService::list_parties(v1::ListPartiesRequest)),
            8 => call!(api, bytes, PartyService::create_party(v1::CreatePartyRequest)),
            9 => call!(api, bytes, PartyService::update_party(v1::UpdatePartyRequest)),
            10 => call!(api, bytes, PartyService::delete_party(v1::DeletePartyRequest)),
            11 => call!(api, bytes, PartyService::undelete_party(v1::UndeletePartyRequest)),
            12 => call!(api, bytes, PartnershipDomainService::get_partnership_domain(v1::GetPartnershipDomainRequest)),
            13 => call!(api, bytes, PartnershipDomainService::list_partnership_domains(v1::ListPartnershipDomainsRequest)),
            14 => call!(api, bytes, PartnershipDomainService::create_partnership_domain(v1::CreatePartnershipDomainRequest)),
            15 => call!(api, bytes, PartnershipDomainService::update_partnership_domain(v1::UpdatePartnershipDomainRequest)),
            16 => call!(api, bytes, PartnershipDomainService::delete_partnership_domain(v1::DeletePartnershipDomainRequest)),
            17 => call!(api, bytes, PartnershipDomainService::undelete_partnership_domain(v1::UndeletePartnershipDomainRequest)),
            18 => call!(api, bytes, EngagementService::get_engagement(v1::GetEngagementRequest)),
            19 => call!(api, bytes, EngagementService::list_engagements(v1::ListEngagementsRequest)),
            20 => call!(api, bytes, EngagementService::create_engagement(v1::CreateEngagementRequest)),
            21 => call!(api, bytes, EngagementService::update_engagement(v1::UpdateEngagementRequest)),
            22 => call!(api, bytes, EngagementService::delete_engagement(v1::DeleteEngagementRequest)),
            23 => call!(api, bytes, EngagementService::undelete_engagement(v1::UndeleteEngagementRequest)),
            24 => call!(api, bytes, RelationshipService::get_relationship(v1::GetRelationshipRequest)),
            25 => call!(api, bytes, ChangeService::list_revisions(v1::ListRevisionsRequest)),
            26 => call!(api, bytes, ChangeService::get_revision(v1::GetRevisionRequest)),
            27 => call!(api, bytes, ChangeService::watch_changes(v1::WatchChangesRequest)),
            _ => call!(api, bytes, AgreementService::get_agreement(v1::GetAgreementRequest)),
        }
    });
});
