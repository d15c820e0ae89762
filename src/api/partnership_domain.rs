//! cooperation.v1.PartnershipDomainService: partnership domains over the generic registry.

use crate::pb::cooperation::v1::PartnershipDomain;
use crate::pb::cooperation::v1::partnership_domain_service_server::PartnershipDomainService;
use crate::pb::cooperation::v1::{
    BatchCreatePartnershipDomainsRequest, BatchCreatePartnershipDomainsResponse, CreatePartnershipDomainRequest,
    DeletePartnershipDomainRequest, GetPartnershipDomainRequest, ListPartnershipDomainsRequest,
    ListPartnershipDomainsResponse, UndeletePartnershipDomainRequest, UpdatePartnershipDomainRequest,
};

super::resource_service!(
    PartnershipDomainService, PartnershipDomain, partnership_domain, partnership_domain_id, partnership_domains,
    get_partnership_domain(GetPartnershipDomainRequest),
    list_partnership_domains(ListPartnershipDomainsRequest) -> ListPartnershipDomainsResponse,
    create_partnership_domain(CreatePartnershipDomainRequest),
    batch_create_partnership_domains(BatchCreatePartnershipDomainsRequest) -> BatchCreatePartnershipDomainsResponse,
    update_partnership_domain(UpdatePartnershipDomainRequest),
    delete_partnership_domain(DeletePartnershipDomainRequest),
    undelete_partnership_domain(UndeletePartnershipDomainRequest),
);

impl super::AsOf for GetPartnershipDomainRequest {}
impl super::AsOf for ListPartnershipDomainsRequest {}
