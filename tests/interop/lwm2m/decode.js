// Decodes LwM2M payloads with the npm lwm2m-codec library (an implementation independent of the
// emulator's codec), for the pytest format tests. Reads {"format", "path", "hex"} objects, one JSON
// array on stdin; writes the decoded values as one JSON array on stdout.
"use strict";
const codec = require("lwm2m-codec");
let input = "";
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ format, path, hex }) => codec.decode(format, path, Buffer.from(hex, "hex")));
  process.stdout.write(JSON.stringify(out));
});
