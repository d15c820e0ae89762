// The conformance scenario with a C++ client generated from proto/ by protoc and
// grpc_cpp_plugin (Debian's libgrpc++-dev). Usage: scenario ADDRESS

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <random>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "cooperation/v1/agreement.grpc.pb.h"
#include "cooperation/v1/change.grpc.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace v1 = cooperation::v1;

static void expect(bool condition, const std::string& what) {
  if (!condition) {
    std::cerr << "c++: " << what << std::endl;
    std::exit(1);
  }
}

static std::unique_ptr<grpc::ClientContext> context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return ctx;
}

int main(int argc, char** argv) {
  expect(argc == 2, "usage: scenario ADDRESS");
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto agreements = v1::AgreementService::NewStub(channel);
  auto changes = v1::ChangeService::NewStub(channel);
  std::mt19937 random(std::random_device{}());
  const std::string id = "conformance-cpp-" + std::to_string(random() % 100000000);
  const std::string name = "agreements/" + id;

  v1::CreateAgreementRequest create;
  create.set_agreement_id(id);
  auto* input = create.mutable_agreement();
  input->set_title("Conformance agreement (C++)");
  input->add_parties("parties/ind");
  input->add_parties("parties/jpn");
  input->mutable_signature_date()->set_year(2020);
  input->mutable_signature_date()->set_month(9);
  input->mutable_signature_date()->set_day(10);
  auto* provision = input->add_provisions();
  provision->set_category(v1::Agreement::PROVISION_CATEGORY_BASING_ACCESS);
  provision->set_reciprocal(true);
  v1::Agreement created;
  auto status = agreements->CreateAgreement(context().get(), create, &created);
  expect(status.ok(), "create failed: " + status.error_message());
  expect(created.name() == name, "create returned " + created.name());
  expect(created.status() == v1::Agreement::STATUS_SIGNED, "unexpected status");

  v1::GetAgreementRequest get;
  get.set_name(name);
  v1::Agreement got;
  status = agreements->GetAgreement(context().get(), get, &got);
  expect(status.ok() && got.title() == "Conformance agreement (C++)" && !got.etag().empty(), "get failed");

  v1::ListAgreementsRequest list;
  list.set_filter("parties:\"parties/jpn\" AND provisions.category = BASING_ACCESS");
  list.set_page_size(1000);
  v1::ListAgreementsResponse listed;
  status = agreements->ListAgreements(context().get(), list, &listed);
  expect(status.ok(), "list failed: " + status.error_message());
  bool found = false;
  for (const auto& a : listed.agreements()) found = found || a.name() == name;
  expect(found, "list with a filter misses the record");
  expect(listed.revision() > 0, "list has no revision");

  v1::UpdateAgreementRequest update;
  update.mutable_agreement()->set_name(name);
  update.mutable_agreement()->set_title("Renamed (C++)");
  update.mutable_agreement()->set_etag(got.etag());
  update.mutable_update_mask()->add_paths("title");
  v1::Agreement updated;
  status = agreements->UpdateAgreement(context().get(), update, &updated);
  expect(status.ok() && updated.title() == "Renamed (C++)" && updated.etag() != got.etag(), "update with the etag failed");
  status = agreements->UpdateAgreement(context().get(), update, &updated);
  expect(status.error_code() == grpc::StatusCode::ABORTED, "a stale etag was not ABORTED");

  v1::CreateAgreementRequest invalid;
  invalid.mutable_agreement()->add_parties("parties/ind");
  invalid.mutable_agreement()->add_parties("parties/jpn");
  invalid.mutable_agreement()->mutable_signature_date()->set_year(2020);
  invalid.mutable_agreement()->mutable_signature_date()->set_month(13);
  status = agreements->CreateAgreement(context().get(), invalid, &created);
  expect(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT, "validation did not give INVALID_ARGUMENT");
  google::rpc::Status details;
  expect(details.ParseFromString(status.error_details()), "no rich status details");
  std::set<std::string> fields;
  for (const auto& any : details.details()) {
    google::rpc::BadRequest bad;
    if (any.UnpackTo(&bad)) {
      for (const auto& v : bad.field_violations()) fields.insert(v.field());
    }
  }
  expect(fields.count("agreement.title") && fields.count("agreement.signature_date"), "field violations missing");

  v1::WatchChangesRequest watch;
  watch.set_start_revision(listed.revision() + 1);
  watch.add_names(name);
  auto watch_context = context();
  auto reader = changes->WatchChanges(watch_context.get(), watch);
  v1::WatchChangesResponse response;
  bool seen = false;
  while (!seen && reader->Read(&response)) {
    for (const auto& change : response.changes()) {
      if (change.name() != name) continue;
      expect(change.type() == v1::Change::TYPE_UPDATED, "change type");
      expect(change.agreement().title() == "Renamed (C++)", "the change does not carry the record");
      seen = true;
    }
  }
  expect(seen, "the watch ended without the change");
  watch_context->TryCancel();
  std::cout << "c++: scenario passed (" << name << ")" << std::endl;
  return 0;
}
