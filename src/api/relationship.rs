//! cooperation.v1.RelationshipService: the relationship between parties on a day.

use crate::pb::cooperation::v1::relationship_service_server::RelationshipService;
use crate::pb::cooperation::v1::{GetRelationshipRequest, Relationship};
use crate::registry::relationship::RelationshipQuery;

#[tonic::async_trait]
impl RelationshipService for super::Api {
    async fn get_relationship(
        &self,
        request: tonic::Request<GetRelationshipRequest>,
    ) -> Result<tonic::Response<Relationship>, tonic::Status> {
        let deadline = crate::server::observe::Deadline::of(&request);
        let request = request.into_inner();
        let query = RelationshipQuery {
            parties: request.parties,
            as_of: request.as_of,
            window_months: request.window_months,
            max_section_items: request.max_section_items,
            deadline,
        };
        let registry = self.registry.clone();
        Ok(tonic::Response::new(self.scan(deadline, async move { registry.relationship(&query).await }).await?))
    }
}
