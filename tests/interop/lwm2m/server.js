// A real LwM2M server (npm lwm2m-node-lib) driven by the pytest LwM2M interop tests.
// Usage: node server.js PORT. Prints one JSON line per event on stdout ({"event": "ready"},
// "registration", "update", "unregistration", "notification"); reads one JSON command per line on
// stdin ({"id", "op", "args"}) and answers {"id", "result"} or {"id", "error"}. The operations are
// the library's own (read, write, execute, writeAttributes, discover, create, observe, cancel);
// "delete" sends a CoAP DELETE through the library's own request path, since its remove() sends nothing.
"use strict";
const readline = require("readline");
const lwm2m = require("lwm2m-node-lib");
const server = lwm2m.server;
const coapUtils = require("lwm2m-node-lib/lib/services/server/coapUtils");

const port = Number(process.argv[2]);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const config = {
  port,
  lifetimeCheckInterval: 1000,
  udpWindow: 100,
  defaultType: "Device",
  logLevel: "FATAL",
  serverProtocol: "udp4",
  ipProtocol: "udp4",
  deviceRegistry: { type: "memory" },
  writeFormat: "text/plain",
  types: [],
};

let serverInfo = null;

server.start(config, (error, info) => {
  if (error) {
    emit({ event: "error", message: String(error) });
    process.exit(1);
  }
  serverInfo = info;
  server.setHandler(info, "registration", (endpoint, lifetime, version, binding, payload, callback) => {
    emit({ event: "registration", endpoint, lifetime, version, binding, payload });
    callback();
  });
  server.setHandler(info, "updateRegistration", (object, payload, callback) => {
    emit({ event: "update", endpoint: object.name, lifetime: object.lifetime, payload });
    callback();
  });
  server.setHandler(info, "unregistration", (device, callback) => {
    emit({ event: "unregistration", endpoint: device && device.name });
    callback();
  });
  emit({ event: "ready", port });
});

function device(name, callback) {
  server.getDevice(name, callback);
}

const ops = {
  read: (name, o, i, r, cb) => device(name, (e, d) => (e ? cb(e) : server.read(d.id, o, i, r, cb))),
  write: (name, o, i, r, v, cb) => device(name, (e, d) => (e ? cb(e) : server.write(d.id, o, i, r, v, cb))),
  writeAttributes: (name, o, i, r, attrs, cb) =>
    device(name, (e, d) => (e ? cb(e) : server.writeAttributes(d.id, o, i, r, attrs, cb))),
  discover: (name, o, i, r, cb) =>
    device(name, (e, d) => {
      if (e) return cb(e);
      if (r !== null) return server.discover(d.id, o, i, r, cb);
      if (i !== null) return server.discover(d.id, o, i, cb);
      return server.discover(d.id, o, cb);
    }),
  create: (name, o, i, cb) => device(name, (e, d) => (e ? cb(e) : server.create(d.id, o, i, cb))),
  observe: (name, o, i, r, cb) =>
    device(name, (e, d) =>
      e
        ? cb(e)
        : server.observe(
            d.id, o, i, r,
            (value) => emit({ event: "notification", path: `/${o}/${i}/${r}`, value }),
            cb,
          ),
    ),
  cancel: (name, o, i, r, cb) => device(name, (e, d) => (e ? cb(e) : server.cancelObserver(d.id, o, i, r, cb))),
  delete: (name, o, i, cb) =>
    device(name, (e, d) => {
      if (e) return cb(e);
      const request = {
        host: "127.0.0.1",
        port,
        method: "DELETE",
        proxyUri: `coap://${d.address}:${d.port}`,
        pathname: `/${o}/${i}`,
      };
      coapUtils.sendRequest(request, (err, res) => (err ? cb(err) : cb(null, res.code)));
    }),
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const { id, op, args } = JSON.parse(line);
  const fn = ops[op];
  if (!fn) return emit({ id, error: `no operation ${op}` });
  fn(...args, (error, result) => {
    if (error) emit({ id, error: error.name || String(error), code: error.code });
    else emit({ id, result: result === undefined ? null : result });
  });
});
