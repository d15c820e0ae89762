//! cooperation.v1.EngagementService: engagements over the generic registry.

use crate::pb::cooperation::v1::Engagement;
use crate::pb::cooperation::v1::engagement_service_server::EngagementService;
use crate::pb::cooperation::v1::{
    BatchCreateEngagementsRequest, BatchCreateEngagementsResponse, CreateEngagementRequest, DeleteEngagementRequest,
    GetEngagementRequest, ListEngagementsRequest, ListEngagementsResponse, UndeleteEngagementRequest,
    UpdateEngagementRequest,
};

super::resource_service!(
    EngagementService, Engagement, engagement, engagement_id, engagements,
    get_engagement(GetEngagementRequest),
    list_engagements(ListEngagementsRequest) -> ListEngagementsResponse,
    create_engagement(CreateEngagementRequest),
    batch_create_engagements(BatchCreateEngagementsRequest) -> BatchCreateEngagementsResponse,
    update_engagement(UpdateEngagementRequest),
    delete_engagement(DeleteEngagementRequest),
    undelete_engagement(UndeleteEngagementRequest),
);

impl super::AsOf for GetEngagementRequest {}
impl super::AsOf for ListEngagementsRequest {}
