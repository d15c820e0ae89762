//! cooperation.v1.AgreementService: agreements over the generic registry.

use crate::pb::cooperation::v1::Agreement;
use crate::pb::cooperation::v1::agreement_service_server::AgreementService;
use crate::pb::cooperation::v1::{
    BatchCreateAgreementsRequest, BatchCreateAgreementsResponse, CreateAgreementRequest, DeleteAgreementRequest,
    GetAgreementRequest, ListAgreementsRequest, ListAgreementsResponse, UndeleteAgreementRequest,
    UpdateAgreementRequest,
};

super::resource_service!(
    AgreementService, Agreement, agreement, agreement_id, agreements,
    get_agreement(GetAgreementRequest),
    list_agreements(ListAgreementsRequest) -> ListAgreementsResponse,
    create_agreement(CreateAgreementRequest),
    batch_create_agreements(BatchCreateAgreementsRequest) -> BatchCreateAgreementsResponse,
    update_agreement(UpdateAgreementRequest),
    delete_agreement(DeleteAgreementRequest),
    undelete_agreement(UndeleteAgreementRequest),
);

impl super::AsOf for GetAgreementRequest {
    fn as_of(&self) -> Option<&crate::pb::google::r#type::Date> {
        self.as_of.as_ref()
    }
}

impl super::AsOf for ListAgreementsRequest {
    fn as_of(&self) -> Option<&crate::pb::google::r#type::Date> {
        self.as_of.as_ref()
    }
}
