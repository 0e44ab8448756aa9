#!/usr/bin/env node
// SPDX-License-Identifier: MIT
//
// Compile EIP3009Token.sol with solc-js (npm "solc", pinned) and write
// EIP3009Token.json = {contractName, abi, bytecode, deployedBytecode, compiler, sourceSha256}.
//
// Usage:  node compile.js [--contract EIP3009Token] [--evm-version cancun] [--out NAME.json]
// Paths are resolved relative to this script's directory. Output is deterministic:
// same solc + same source + same settings => byte-identical JSON (no timestamps, no
// absolute paths; the source is registered under the bare name "EIP3009Token.sol").
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

// --contract NAME compiles NAME.sol's contract NAME (default: the token).
const CONTRACT_NAME = arg("--contract", "EIP3009Token");
const SOURCE_NAME = `${CONTRACT_NAME}.sol`;

// "cancun" runs on py-evm's CancunVM and PragueVM (eth-tester's default since 0.13),
// on anvil/hardhat defaults, and on every current L1/L2 (incl. Base).
const EVM_VERSION = arg("--evm-version", "cancun");
const OUT_FILE = path.resolve(__dirname, arg("--out", `${CONTRACT_NAME}.json`));

const optimizer = { enabled: true, runs: 200 };

const sourceText = fs.readFileSync(path.join(__dirname, SOURCE_NAME), "utf8");
const input = {
  language: "Solidity",
  sources: { [SOURCE_NAME]: { content: sourceText } },
  settings: {
    optimizer,
    evmVersion: EVM_VERSION,
    viaIR: false,
    outputSelection: {
      [SOURCE_NAME]: {
        [CONTRACT_NAME]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.deployedBytecode.immutableReferences"],
      },
    },
  },
};

const t0 = process.hrtime.bigint();
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const ms = Number(process.hrtime.bigint() - t0) / 1e6;

let failed = false;
for (const e of output.errors || []) {
  process.stderr.write((e.formattedMessage || e.message) + "\n");
  if (e.severity === "error") failed = true;
}
if (failed) process.exit(1);

const c = output.contracts[SOURCE_NAME][CONTRACT_NAME];
const artifact = {
  contractName: CONTRACT_NAME,
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  // {astId: [{start, length}]} byte ranges of deployedBytecode that the constructor
  // fills in (owner, cached domain separator, ...); zeroed in deployedBytecode.
  immutableReferences: c.evm.deployedBytecode.immutableReferences,
  compiler: {
    name: "solc-js",
    version: solc.version(),
    evmVersion: EVM_VERSION,
    optimizer,
    viaIR: false,
  },
  sourceName: SOURCE_NAME,
  sourceSha256: crypto.createHash("sha256").update(sourceText, "utf8").digest("hex"),
};

fs.writeFileSync(OUT_FILE, JSON.stringify(artifact, null, 2) + "\n");
console.log(
  `compiled ${SOURCE_NAME} with solc ${solc.version()} (evm ${EVM_VERSION}, optimizer runs ${optimizer.runs}) ` +
    `in ${ms.toFixed(0)} ms -> ${path.relative(process.cwd(), OUT_FILE) || OUT_FILE} ` +
    `(init ${(artifact.bytecode.length - 2) / 2} B, runtime ${(artifact.deployedBytecode.length - 2) / 2} B)`
);
