// Run by tests/e2e/test_sentry_sdks.py with node: the real @sentry/node SDK, DSN from argv[2].
// Prints one JSON line: event ids sent, events the SDK recorded as dropped, HTTP statuses it got back.
"use strict";
const Sentry = require("@sentry/node");

const sent = [];
const lost = [];
const statuses = [];

function work(kind, n) {
  // Three bugs, each thrown from two different lines of this one function, with different data.
  const data = { n };
  if (kind === "ref") {
    if (n % 2) return data.missing.value;
    return data[`other${n}`].deep;
  }
  if (kind === "range") {
    if (n % 2) return new Array(-n);
    return "x".repeat(-1 - n);
  }
  if (n % 2) return JSON.parse(`{"n": ${n}`);
  return JSON.parse("[" + "x".repeat(n + 1));
}

function save(order) {
  try {
    throw new Error(`db down while saving order ${order}`);
  } catch (cause) {
    throw new Error(`could not save order ${order}`, { cause });
  }
}

async function main() {
  // Patched before init: the client hands its transport a bound copy of this method at construction.
  const record = Sentry.NodeClient.prototype.recordDroppedEvent;
  Sentry.NodeClient.prototype.recordDroppedEvent = function (reason, category, event) {
    lost.push(`${reason}:${category}`);
    return record.call(this, reason, category, event);
  };
  Sentry.init({
    dsn: process.argv[2],
    defaultIntegrations: false,
    integrations: [Sentry.linkedErrorsIntegration()],
    skipOpenTelemetrySetup: true,
    tracesSampleRate: 0,
    sendClientReports: true,
    release: "js-e2e@1",
    beforeSend(event) { sent.push(event.event_id); return event; },
  });
  const client = Sentry.getClient();
  const transport = client.getTransport();
  const send = transport.send.bind(transport);
  transport.send = (envelope) => send(envelope).then((response) => {
    statuses.push(response && response.statusCode !== undefined ? response.statusCode : JSON.stringify(response));
    return response;
  }, (err) => { statuses.push(`error: ${err}`); throw err; });
  for (const kind of ["ref", "range", "syntax"]) {
    for (let n = 0; n < 20; n++) {
      try { work(kind, n); } catch (err) { Sentry.captureException(err); }
    }
    // The transport keeps at most 64 requests in flight and drops the rest (queue_overflow): like an
    // application, let it drain between bursts.
    await Sentry.flush(30000);
  }
  for (let i = 0; i < 5; i++) Sentry.captureMessage(`checkout slow for cart ${i * 31}`, "warning");
  for (let order = 0; order < 3; order++) {
    try { save(order); } catch (err) { Sentry.captureException(err); }
  }
  const errors = [new TypeError("a"), new RangeError("b"), new SyntaxError("c"), new Error("d")];
  errors.forEach((err, i) => {
    Sentry.withScope((scope) => {
      scope.setFingerprint(["payment-gateway"]);
      scope.setTag("attempt", String(i));
      Sentry.captureException(err);
    });
  });
  await Sentry.flush(30000);
  process.stdout.write(JSON.stringify({ sent, lost, statuses }) + "\n");
}

main().catch((err) => { console.error(err); process.exit(1); });
