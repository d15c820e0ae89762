//! cooperation.v1.PartyService: parties over the generic registry.

use crate::pb::cooperation::v1::Party;
use crate::pb::cooperation::v1::party_service_server::PartyService;
use crate::pb::cooperation::v1::{
    BatchCreatePartiesRequest, BatchCreatePartiesResponse, CreatePartyRequest, DeletePartyRequest, GetPartyRequest,
    ListPartiesRequest, ListPartiesResponse, UndeletePartyRequest, UpdatePartyRequest,
};

super::resource_service!(
    PartyService, Party, party, party_id, parties,
    get_party(GetPartyRequest),
    list_parties(ListPartiesRequest) -> ListPartiesResponse,
    create_party(CreatePartyRequest),
    batch_create_parties(BatchCreatePartiesRequest) -> BatchCreatePartiesResponse,
    update_party(UpdatePartyRequest),
    delete_party(DeletePartyRequest),
    undelete_party(UndeletePartyRequest),
);

impl super::AsOf for GetPartyRequest {}
impl super::AsOf for ListPartiesRequest {}
