// The conformance scenario with a TypeScript client on Node: @grpc/grpc-js,
// @grpc/proto-loader, and types generated from proto/ by proto-loader-gen-types.
// Usage: node dist/scenario.js ADDRESS

import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import type { ProtoGrpcType as AgreementProto } from './gen/agreement';
import type { ProtoGrpcType as ChangeProto } from './gen/change';
import type { Agreement__Output } from './gen/cooperation/v1/Agreement';

const PROTO_ROOT = path.resolve(__dirname, '../../../proto');
const options: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] };

function fail(what: string): never {
  console.error(`node: ${what}`);
  process.exit(1);
}

function expect(condition: boolean, what: string): void {
  if (!condition) fail(what);
}

function call<Req, Res>(method: (request: Req, callback: grpc.requestCallback<Res>) => unknown, request: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, (error, response) => (error ? reject(error) : resolve(response as Res)));
  });
}

async function main(): Promise<void> {
  const address = process.argv[2];
  const agreementProto = grpc.loadPackageDefinition(protoLoader.loadSync('cooperation/v1/agreement.proto', options)) as unknown as AgreementProto;
  const changeProto = grpc.loadPackageDefinition(protoLoader.loadSync('cooperation/v1/change.proto', options)) as unknown as ChangeProto;
  const credentials = grpc.credentials.createInsecure();
  const agreements = new agreementProto.cooperation.v1.AgreementService(address, credentials);
  const changes = new changeProto.cooperation.v1.ChangeService(address, credentials);
  const id = `conformance-node-${Math.random().toString(16).slice(2, 10)}`;
  const name = `agreements/${id}`;

  const created = await call<any, Agreement__Output>(agreements.CreateAgreement.bind(agreements), {
    agreement_id: id,
    agreement: {
      title: 'Conformance agreement (Node)',
      parties: ['parties/ind', 'parties/jpn'],
      signature_date: { year: 2020, month: 9, day: 10 },
      provisions: [{ category: 'PROVISION_CATEGORY_BASING_ACCESS', reciprocal: true }],
    },
  });
  expect(created.name === name, `create returned ${created.name}`);
  expect(created.status === 'STATUS_SIGNED', `status ${created.status}`);

  const got = await call<any, Agreement__Output>(agreements.GetAgreement.bind(agreements), { name });
  expect(got.title === 'Conformance agreement (Node)' && got.etag !== '', 'get returned another record');

  const listed = await call<any, any>(agreements.ListAgreements.bind(agreements), {
    filter: 'parties:"parties/jpn" AND provisions.category = BASING_ACCESS',
    page_size: 1000,
  });
  expect(listed.agreements.some((a: Agreement__Output) => a.name === name), 'list with a filter misses the record');
  const revision = BigInt(listed.revision);
  expect(revision > 0n, 'list has no revision');

  const patch = { name, title: 'Renamed (Node)', etag: got.etag };
  const updated = await call<any, Agreement__Output>(agreements.UpdateAgreement.bind(agreements), { agreement: patch, update_mask: { paths: ['title'] } });
  expect(updated.title === 'Renamed (Node)' && updated.etag !== got.etag, 'update with the etag failed');
  try {
    await call<any, Agreement__Output>(agreements.UpdateAgreement.bind(agreements), { agreement: patch, update_mask: { paths: ['title'] } });
    fail('a stale etag was accepted');
  } catch (error) {
    expect((error as grpc.ServiceError).code === grpc.status.ABORTED, `stale etag gave ${(error as grpc.ServiceError).code}`);
  }

  // Rich error details: google.rpc.Status in the grpc-status-details-bin trailer.
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO_ROOT, target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  const Status = root.lookupType('google.rpc.Status');
  const BadRequest = root.lookupType('google.rpc.BadRequest');
  try {
    await call<any, Agreement__Output>(agreements.CreateAgreement.bind(agreements), {
      agreement: { parties: ['parties/ind', 'parties/jpn'], signature_date: { year: 2020, month: 13 } },
    });
    fail('an invalid agreement was accepted');
  } catch (error) {
    const serviceError = error as grpc.ServiceError;
    expect(serviceError.code === grpc.status.INVALID_ARGUMENT, `validation gave ${serviceError.code}`);
    const raw = serviceError.metadata.get('grpc-status-details-bin')[0] as Buffer;
    expect(raw !== undefined, 'no status details');
    const status = Status.decode(new Uint8Array(raw)) as unknown as { details: { type_url: string; value: Uint8Array }[] };
    const fields: string[] = [];
    for (const detail of status.details) {
      if (detail.type_url.endsWith('google.rpc.BadRequest')) {
        const bad = BadRequest.decode(detail.value) as unknown as { field_violations: { field: string }[] };
        fields.push(...bad.field_violations.map((v) => v.field));
      }
    }
    expect(fields.includes('agreement.title') && fields.includes('agreement.signature_date'), `field violations ${fields}`);
  }

  await new Promise<void>((resolve) => {
    const stream = changes.WatchChanges({ start_revision: (revision + 1n).toString(), names: [name] }, { deadline: Date.now() + 10_000 });
    stream.on('data', (response: any) => {
      const change = response.changes.find((c: any) => c.name === name);
      if (!change) return;
      expect(change.type === 'TYPE_UPDATED', `change type ${change.type}`);
      expect(change.agreement?.title === 'Renamed (Node)', 'the change does not carry the record');
      stream.cancel();
      resolve();
    });
    stream.on('error', (error: grpc.ServiceError) => {
      if (error.code !== grpc.status.CANCELLED) fail(`watch failed: ${error.message}`);
    });
  });
  console.log(`node: scenario passed (${name})`);
  agreements.close();
  changes.close();
}

main().catch((error) => fail(String(error)));
