// ajv 8.20.0, one process: JSON.parse + validate of every line of a JSONL file, the errors of
// invalid records formatted as the function formats its reasons. Prints its own records/s
// (parse and validate only); bench/validate.sh times the whole process.
// Usage: node bench.js DATA.jsonl SCHEMA.json [--all-errors]
// Default options except: strict off and validateFormats off, so "format" stays an annotation
// as in the function and in Python's jsonschema by default. --all-errors collects every error
// of an invalid record (the function does, but only after a fast is_valid pass).
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020").default;
const [data, schemaPath, flag] = process.argv.slice(2);
const schema = JSON.parse(fs.readFileSync(schemaPath, "utf8"));
const ajv = new Ajv2020({ strict: false, allErrors: flag === "--all-errors", validateFormats: false });
const validate = ajv.compile(schema);
const lines = fs.readFileSync(data, "utf8").split("\n").filter((l) => l.trim() !== "");

const t = process.hrtime.bigint();
let valid = 0, rejected = 0, nerr = 0;
for (const line of lines) {
  let rec;
  try { rec = JSON.parse(line); } catch (e) { rejected++; continue; }
  if (validate(rec)) valid++;
  else { nerr += validate.errors.map((e) => `${e.instancePath || "/"}: ${e.message}`).length; rejected++; }
}
const s = Number(process.hrtime.bigint() - t) / 1e9;
console.log(JSON.stringify({ tool: "ajv" + (flag ? " " + flag : ""), records: valid + rejected, valid, rejected,
  parse_and_validate_s: +s.toFixed(3), records_per_s: Math.round((valid + rejected) / s) }));
