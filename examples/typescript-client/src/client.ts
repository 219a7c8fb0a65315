// A tenant's client of the sovereign AI job marketplace, written from the README's integration guide and
// the published contracts only (no code of the marketplace's): it signs envelopes, submits jobs, follows
// the tenant's stream to the bill, cancels, and reads the marketplace's refusals.
//
//   tsx src/client.ts vector [contracts/signing-vector.json]   verify the worked signing vector
//   tsx src/client.ts tour                                     the tour below, against a running marketplace
//   tsx src/client.ts sign < envelope.json                     sign an envelope as JavaScript reads it
//
// The tour reads KAFKA_BOOTSTRAP_SERVERS, TENANT_ID, TENANT_KEY_ID and TENANT_KEY_FILE (a PKCS#8 PEM
// Ed25519 private key, as `sovereign keys new` writes it) and prints one JSON line per step.

import { createHash, createPrivateKey, createPublicKey, randomUUID, sign, verify, KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { Kafka, logLevel, Partitioners } from "kafkajs";

type Json = null | boolean | number | string | Json[] | { [member: string]: Json };
type Envelope = { [member: string]: Json } & { id: string; type: string; data: { [member: string]: Json } };

// RFC 8785: members sorted by their UTF-16 code units (JavaScript's own string order), numbers and strings
// as ECMAScript's JSON.stringify writes them, no whitespace.
export function jcs(value: Json): string {
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error(`JCS has no form for ${value}`);
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(jcs).join(",")}]`;
  const members = Object.keys(value).sort();
  return `{${members.map((name) => `${JSON.stringify(name)}:${jcs(value[name])}`).join(",")}}`;
}

// The guide's job id: uuid5 of "<tenant_id>/<client_request_id>" in the marketplace's namespace.
const JOB_ID_NAMESPACE = "6f1c2a4e-8d0b-4c55-9a57-3b7d2f0e9c11";

export function uuid5(namespace: string, name: string): string {
  const hash = createHash("sha1")
    .update(Buffer.from(namespace.replaceAll("-", ""), "hex"))
    .update(name, "utf8")
    .digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export const jobIdFor = (tenantId: string, clientRequestId: string): string =>
  uuid5(JOB_ID_NAMESPACE, `${tenantId}/${clientRequestId}`);

// Sign the envelope as it will be sent, without a signature member; then add the signature to it.
export function signed(envelope: Envelope, keyId: string, key: KeyObject): Envelope {
  const value = sign(null, Buffer.from(jcs(envelope), "utf8"), key).toString("base64");
  return { ...envelope, signature: { key_id: keyId, value } };
}

function report(step: string, facts: { [name: string]: Json }): void {
  console.log(JSON.stringify({ step, ...facts }));
}

function verifyVector(path: string): void {
  const vector = JSON.parse(readFileSync(path, "utf8"));
  const canonical = jcs(JSON.parse(vector.envelope_unsigned));
  if (canonical !== vector.canonical_utf8) throw new Error(`canonical form differs:\n${canonical}`);
  const digest = createHash("sha256").update(canonical, "utf8").digest("hex");
  if (digest !== vector.canonical_sha256) throw new Error("canonical digest differs");
  const base64url = (text: string) => Buffer.from(text, "base64").toString("base64url");
  const jwk = { kty: "OKP", crv: "Ed25519", d: base64url(vector.private_key_seed_base64), x: base64url(vector.public_key_base64) };
  const privateKey = createPrivateKey({ key: jwk, format: "jwk" });
  const publicKey = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: jwk.x }, format: "jwk" });
  // Ed25519 is deterministic: the same key over the same bytes gives the published signature.
  const signature = sign(null, Buffer.from(canonical, "utf8"), privateKey).toString("base64");
  if (signature !== vector.signature_base64) throw new Error("signature differs from the vector's");
  const sent = JSON.parse(vector.envelope_signed);
  const { signature: attached, ...unsigned } = sent;
  const bytes = Buffer.from(jcs(unsigned), "utf8");
  if (!verify(null, bytes, publicKey, Buffer.from(attached.value, "base64"))) throw new Error("does not verify");
  report("vector_verified", { canonical_sha256: digest, key_id: attached.key_id });
}

async function tour(): Promise<void> {
  const env = (name: string): string => {
    const value = process.env[name];
    if (!value) throw new Error(`set ${name}`);
    return value;
  };
  const tenant = env("TENANT_ID");
  const keyId = env("TENANT_KEY_ID");
  const key = createPrivateKey(readFileSync(env("TENANT_KEY_FILE")));
  const kafka = new Kafka({
    clientId: `tenant-${tenant}-typescript`,
    brokers: env("KAFKA_BOOTSTRAP_SERVERS").split(","),
    logLevel: logLevel.WARN,
  });
  // The guide: a tenant's groups are named `tenant.<tenant_id>.<anything>` (its ACL grants that prefix),
  // and a short fetch wait keeps the latency of each answer low.
  const stream = kafka.consumer({ groupId: `tenant.${tenant}.client.${randomUUID()}`, maxWaitTimeInMs: 50 });
  const seen: Envelope[] = [];
  await stream.connect();
  await stream.subscribe({ topic: `tenant.${tenant}`, fromBeginning: true });
  await stream.run({
    eachMessage: async ({ message }) => {
      if (message.value) seen.push(JSON.parse(message.value.toString("utf8")));
    },
  });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();

  const envelope = (type: string, data: { [member: string]: Json }): Envelope => ({
    id: randomUUID(),
    type,
    source: `tenant/${tenant}`,
    subject: tenant,
    time: new Date().toISOString(), // milliseconds and Z, as JavaScript writes UTC
    schema_version: type === "jobs.requested" ? "1.5" : "1.2",
    data,
  });
  // The record key of a request and of a cancel is the job id.
  const send = async (sent: Envelope, jobId: string) => {
    await producer.send({
      topic: sent.type,
      messages: [{ key: jobId, value: JSON.stringify(sent), headers: { "content-type": "application/json" } }],
    });
  };
  const request = (clientRequestId: string, fields: { [member: string]: Json }) =>
    signed(
      envelope("jobs.requested", {
        tenant_id: tenant,
        client_request_id: clientRequestId,
        name: "민원 요약 — typescript client",
        kind: "inference",
        gpu_count: 4,
        expected_hours: 3,
        deadline: new Date(Date.now() + 30 * 24 * 3600 * 1000).toISOString(),
        ...fields,
      }),
      keyId,
      key,
    );
  const cancel = (jobId: string) =>
    signed(envelope("jobs.cancel", { tenant_id: tenant, job_id: jobId, reason: "no longer needed" }), keyId, key);
  const waitFor = async (what: string, match: (event: Envelope) => boolean, seconds = 90): Promise<Envelope> => {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      const found = seen.find(match);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no ${what} on tenant.${tenant} within ${seconds} s`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const about = (type: string, jobId: string) => (event: Envelope) =>
    event.type === type && event.data.job_id === jobId;

  // 1. A job, followed to its bill. jobs.completed and jobs.billed come from different services: either
  //    may arrive first.
  const first = `ts-${randomUUID()}`;
  const firstJob = jobIdFor(tenant, first);
  await send(request(first, {}), firstJob);
  const placed = await waitFor("jobs.placed", about("jobs.placed", firstJob));
  const [completed, billed] = await Promise.all([
    waitFor("jobs.completed", about("jobs.completed", firstJob)),
    waitFor("jobs.billed", about("jobs.billed", firstJob)),
  ]);
  const rated = seen.filter((event) => about("billing.usage", firstJob)(event));
  const ratedKrw = rated.reduce((total, event) => total + (event.data.amount_krw as number), 0);
  report("billed", {
    job_id: firstJob,
    site_id: placed.data.site_id,
    status: completed.data.status,
    amount_krw: billed.data.amount_krw,
    usage_reports: billed.data.usage_reports,
    rated_krw: ratedKrw,
    rated_records: rated.length,
  });

  // 2. An invalid request, signed: refused on the stream with each field's error.
  const invalid = request(`ts-${randomUUID()}`, { gpu_count: 0 });
  await send(invalid, jobIdFor(tenant, invalid.data.client_request_id as string));
  const refusal = await waitFor("refusal", (event) => event.type === "jobs.rejected" && event.data.envelope_id === invalid.id);
  report("refused", {
    code: refusal.data.code,
    scope: refusal.data.scope,
    field_errors: refusal.data.field_errors,
  });

  // 3. A cancel of a job nobody asked for: a clear answer.
  const nobody = jobIdFor(tenant, `never-sent-${randomUUID()}`);
  const unknownCancel = cancel(nobody);
  await send(unknownCancel, nobody);
  const unknown = await waitFor("answer", (event) => event.type === "jobs.rejected" && event.data.envelope_id === unknownCancel.id);
  report("unknown_cancel", { code: unknown.data.code, scope: unknown.data.scope });

  // 4. A long job, cancelled once it is placed.
  const long = `ts-${randomUUID()}`;
  const longJob = jobIdFor(tenant, long);
  const nextYear = new Date(Date.now() + 365 * 24 * 3600 * 1000).toISOString();
  await send(request(long, { expected_hours: 5000, deadline: nextYear }), longJob);
  await waitFor("jobs.placed", about("jobs.placed", longJob));
  await send(cancel(longJob), longJob);
  const cancelled = await waitFor("jobs.cancelled", about("jobs.cancelled", longJob));
  report("cancelled", { job_id: longJob, stage: cancelled.data.stage });

  const others = seen.filter((event) => event.data.tenant_id !== tenant).length;
  report("stream", { events: seen.length, of_other_tenants: others });
  await producer.disconnect();
  await stream.disconnect();
}

// An envelope read as JavaScript reads it (each number an IEEE double), signed with the tenant's key, and
// written as JSON.stringify writes it: what any JavaScript client sends.
function signStdin(): void {
  const envelope = JSON.parse(readFileSync(0, "utf8")) as Envelope;
  const key = createPrivateKey(readFileSync(process.env.TENANT_KEY_FILE ?? "", "utf8"));
  console.log(JSON.stringify(signed(envelope, process.env.TENANT_KEY_ID ?? "", key)));
}

const [command, argument] = process.argv.slice(2);
const commands: { [name: string]: () => Promise<void> } = {
  vector: async () => verifyVector(argument ?? "../../contracts/signing-vector.json"),
  sign: async () => signStdin(),
  tour,
};
const run = commands[command] ?? tour;
run().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
