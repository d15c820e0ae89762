"""The conformance scenario with a Python client generated from proto/ by grpcio-tools.

Usage: scenario.py ADDRESS GENERATED_DIR
"""

import sys
import time
import uuid

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from google.type import date_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from cooperation.v1 import agreement_pb2, agreement_pb2_grpc, change_pb2, change_pb2_grpc  # noqa: E402


def expect(condition, what):
    if not condition:
        sys.exit(f"python: {what}")


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    agreements = agreement_pb2_grpc.AgreementServiceStub(channel)
    changes = change_pb2_grpc.ChangeServiceStub(channel)
    agreement_id = f"conformance-python-{uuid.uuid4().hex[:8]}"
    name = f"agreements/{agreement_id}"

    created = agreements.CreateAgreement(agreement_pb2.CreateAgreementRequest(
        agreement_id=agreement_id,
        agreement=agreement_pb2.Agreement(
            title="Conformance agreement (Python)",
            parties=["parties/ind", "parties/jpn"],
            signature_date=date_pb2.Date(year=2020, month=9, day=10),
            provisions=[agreement_pb2.Agreement.Provision(
                category=agreement_pb2.Agreement.PROVISION_CATEGORY_BASING_ACCESS, reciprocal=True)],
        )))
    expect(created.name == name, f"create returned {created.name}")
    expect(created.status == agreement_pb2.Agreement.STATUS_SIGNED, f"status {created.status}")

    got = agreements.GetAgreement(agreement_pb2.GetAgreementRequest(name=name))
    expect(got.title == "Conformance agreement (Python)" and got.etag, "get returned another record")

    listed = agreements.ListAgreements(agreement_pb2.ListAgreementsRequest(
        filter='parties:"parties/jpn" AND provisions.category = BASING_ACCESS', page_size=1000))
    expect(name in [a.name for a in listed.agreements], "list with a filter misses the record")
    expect(listed.revision > 0, "list has no revision")

    patch = agreement_pb2.Agreement(name=name, title="Renamed (Python)", etag=got.etag)
    mask = {"paths": ["title"]}
    updated = agreements.UpdateAgreement(agreement_pb2.UpdateAgreementRequest(agreement=patch, update_mask=mask))
    expect(updated.title == "Renamed (Python)" and updated.etag != got.etag, "update with the etag failed")
    try:
        agreements.UpdateAgreement(agreement_pb2.UpdateAgreementRequest(agreement=patch, update_mask=mask))
        expect(False, "a stale etag was accepted")
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.ABORTED, f"stale etag gave {error.code()}")

    try:
        agreements.CreateAgreement(agreement_pb2.CreateAgreementRequest(agreement=agreement_pb2.Agreement(
            parties=["parties/ind", "parties/jpn"], signature_date=date_pb2.Date(year=2020, month=13))))
        expect(False, "an invalid agreement was accepted")
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"validation gave {error.code()}")
        status = rpc_status.from_call(error)
        fields = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
        expect({"agreement.title", "agreement.signature_date"} <= set(fields), f"field violations {fields}")

    stream = changes.WatchChanges(change_pb2.WatchChangesRequest(start_revision=listed.revision + 1, names=[name]),
                                  timeout=10)
    for response in stream:
        found = [c for c in response.changes if c.name == name]
        if found:
            change = found[0]
            expect(change.type == change_pb2.Change.TYPE_UPDATED, f"change type {change.type}")
            expect(change.agreement.title == "Renamed (Python)", "the change does not carry the record")
            break
    stream.cancel()
    print(f"python: scenario passed ({name})")


if __name__ == "__main__":
    start = time.time()
    main()
