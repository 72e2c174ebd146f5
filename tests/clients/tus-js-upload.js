#!/usr/bin/env node
// One upload with tus-js-client under Node, as an application would make it,
// for tests/tus_clients.rs. It prints one JSON object on stdout: the final
// upload URL and every request the client sent, so that a test can check not
// only the stored file but also how the client got there (which protocol, how
// many PATCHes, from which offset a resumed run went on).
//
//   node tests/clients/tus-js-upload.js ENDPOINT FILE [options]
//
//   --protocol tus-v1|ietf-draft-03|ietf-draft-05   (default tus-v1)
//   --chunk-size BYTES      one PATCH per chunk (default: the whole file in one)
//   --parallel N            parallelUploads: N partial uploads, then a final
//                           concatenation (the server needs `concatenation`)
//   --defer-length          uploadLengthDeferred: the file is read as a plain
//                           stream, so the client itself does not know its
//                           length until the end (needs --chunk-size)
//   --upload-during-creation  the first chunk goes in the creating POST
//   --override-patch        POST with X-HTTP-Method-Override: PATCH
//   --storage DIR           keep upload URLs in DIR/tus-js-urls.json
//                           (tus-js-client's FileUrlStorage)
//   --stop-after BYTES      send exactly BYTES of the file's bytes, then SIGKILL
//                           this process: a run killed mid-upload, nothing
//                           cleaned up; prints {"stopped":true,...} first
//   --resume                find the upload stored under --storage for this
//                           file (findPreviousUploads) and go on from the
//                           server's offset (resumeFromPreviousUpload); an
//                           error if none is stored
//   --header 'Name: value'  sent with every request (repeatable), e.g. a
//                           signed `X-Progress-ID` the application issued
//   --metadata key=value    Upload-Metadata (repeatable; default: filename and
//                           filetype of FILE)
//
// tus-js-client is not a dependency of this repository: scripts/install-clients
// installs the pinned version under target/tus-clients (TUS_CLIENTS_DIR
// overrides where to look).
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const { PassThrough, Readable, Transform } = require('node:stream')
const { createRequire } = require('node:module')

const installDir =
  process.env.TUS_CLIENTS_DIR || path.join(__dirname, '..', '..', 'target', 'tus-clients')

function fail(message, extra = {}) {
  process.stdout.write(`${JSON.stringify({ error: message, ...extra })}\n`)
  process.exit(1)
}

let tus
try {
  // Resolved from the install folder, not from this file's: the client is
  // installed under target/, outside the source tree.
  tus = createRequire(path.join(installDir, 'package.json'))('tus-js-client')
} catch (e) {
  fail(`tus-js-client is not installed in ${installDir} (${e.code}): run scripts/install-clients`)
}

function parseArgs(argv) {
  const opts = {
    protocol: 'tus-v1',
    chunkSize: Number.POSITIVE_INFINITY,
    parallel: 1,
    deferLength: false,
    uploadDuringCreation: false,
    overridePatch: false,
    storage: null,
    stopAfter: null,
    resume: false,
    headers: {},
    metadata: null,
  }
  const positional = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value`)
      return argv[++i]
    }
    const count = () => {
      const n = Number(value())
      if (!Number.isSafeInteger(n) || n < 1) fail(`${arg} needs a positive whole number`)
      return n
    }
    switch (arg) {
      case '--protocol':
        opts.protocol = value()
        break
      case '--chunk-size':
        opts.chunkSize = count()
        break
      case '--parallel':
        opts.parallel = count()
        break
      case '--defer-length':
        opts.deferLength = true
        break
      case '--upload-during-creation':
        opts.uploadDuringCreation = true
        break
      case '--override-patch':
        opts.overridePatch = true
        break
      case '--storage':
        opts.storage = value()
        break
      case '--stop-after':
        opts.stopAfter = count()
        break
      case '--resume':
        opts.resume = true
        break
      case '--header': {
        const header = value()
        const colon = header.indexOf(':')
        if (colon < 1) fail(`--header wants 'Name: value', not ${JSON.stringify(header)}`)
        opts.headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim()
        break
      }
      case '--metadata': {
        const pair = value()
        const eq = pair.indexOf('=')
        if (eq < 1) fail(`--metadata wants key=value, not ${JSON.stringify(pair)}`)
        opts.metadata = opts.metadata || {}
        opts.metadata[pair.slice(0, eq)] = pair.slice(eq + 1)
        break
      }
      default:
        if (arg.startsWith('--')) fail(`unknown option ${arg}`)
        positional.push(arg)
    }
  }
  if (positional.length !== 2) fail('usage: tus-js-upload.js ENDPOINT FILE [options]')
  ;[opts.endpoint, opts.file] = positional
  if (opts.deferLength && !Number.isFinite(opts.chunkSize)) {
    // A plain stream has no length to cut the last chunk at; tus-js-client
    // refuses it without a chunk size, and so would any real streaming client.
    fail('--defer-length needs --chunk-size')
  }
  if ((opts.resume || opts.stopAfter != null) && !opts.storage) {
    fail('--resume and --stop-after need --storage: the URL must outlive the process')
  }
  return opts
}

const opts = parseArgs(process.argv.slice(2))

// Every request and its answer, in the order the client sent them.
const requests = []

function header(res, name) {
  const value = res.getHeader(name)
  return value == null ? null : value
}

// With --defer-length the file goes through a PassThrough: a stream that is
// not an fs.ReadStream, so tus-js-client cannot stat it and really does not
// know the length until the stream ends (and computes no fingerprint, so such
// an upload cannot be resumed from storage: the same is true in a browser).
const input = opts.deferLength
  ? fs.createReadStream(opts.file).pipe(new PassThrough())
  : fs.createReadStream(opts.file)

const size = fs.statSync(opts.file).size
let sent = 0

// --stop-after cuts the bodies themselves rather than watching onProgress:
// tus-js-client reports progress a few times a second, by which time
// megabytes have gone on loopback. Exactly BYTES of the file leave this
// process, then it is killed.
let bodyBytes = 0
let stopping = false

function stopAt(body, req) {
  const source = body instanceof Readable ? body : Readable.from([Buffer.from(body)])
  const cut = new Transform({
    transform(chunk, _encoding, done) {
      if (stopping) return // stalled for good: the kill is on its way
      const room = opts.stopAfter - bodyBytes
      if (chunk.length < room) {
        bodyBytes += chunk.length
        done(null, chunk)
        return
      }
      bodyBytes += room
      stopping = true
      this.push(chunk.subarray(0, room))
      killOnceFlushed(req)
    },
  })
  // tus-js-client's Node stack sends Content-Length from the body's size.
  cut.size = body.size ?? body.length
  return source.pipe(cut)
}

function killOnceFlushed(req) {
  const outgoing = req.getUnderlyingObject()
  const began = Date.now()
  const poll = setInterval(() => {
    // Bytes still in Node's own buffers would die with the process; bytes
    // in the kernel's are sent before its FIN. Wait for the former (5 s at
    // most: a server that stopped reading cannot make this run hang).
    if ((outgoing && outgoing.writableLength > 0) && Date.now() - began < 5000) return
    clearInterval(poll)
    // What a killed run leaves: no abort, no answer awaited, the socket
    // closed by the kernel. Pipes to the test are synchronous on Linux, so
    // this line is out before the signal lands.
    process.stdout.write(
      `${JSON.stringify({ stopped: true, sent: bodyBytes, url: upload.url, requests })}\n`,
    )
    process.kill(process.pid, 'SIGKILL')
  }, 10)
}

class StoppingHttpStack extends tus.DefaultHttpStack {
  createRequest(method, url) {
    const req = super.createRequest(method, url)
    const send = req.send.bind(req)
    req.send = (body = null) => send(body != null && body.length !== 0 ? stopAt(body, req) : body)
    return req
  }
}

const upload = new tus.Upload(input, {
  endpoint: opts.endpoint,
  protocol: opts.protocol,
  chunkSize: opts.chunkSize,
  parallelUploads: opts.parallel,
  uploadLengthDeferred: opts.deferLength,
  uploadDataDuringCreation: opts.uploadDuringCreation,
  overridePatchMethod: opts.overridePatch,
  headers: opts.headers,
  metadata: opts.metadata || {
    filename: path.basename(opts.file),
    filetype: 'application/octet-stream',
  },
  // No automatic retries: a test wants the first failure, not a success
  // after three silent attempts. Resuming is what --resume is for.
  retryDelays: [],
  // (Left out without --storage: an undefined urlStorage would replace
  // tus-js-client's default, a storage that keeps nothing.)
  ...(opts.storage
    ? { urlStorage: new tus.FileUrlStorage(path.join(opts.storage, 'tus-js-urls.json')) }
    : {}),
  ...(opts.stopAfter != null ? { httpStack: new StoppingHttpStack() } : {}),
  // Kept after success, so that a test can see what was stored.
  removeFingerprintOnSuccess: false,
  onBeforeRequest(req) {
    requests.push({
      method: req.getMethod(),
      url: req.getURL(),
      offset: req.getHeader('Upload-Offset') ?? null,
      length: req.getHeader('Upload-Length') ?? null,
      concat: req.getHeader('Upload-Concat') ?? null,
      complete: req.getHeader('Upload-Complete') ?? null,
      contentType: req.getHeader('Content-Type') ?? null,
      methodOverride: req.getHeader('X-HTTP-Method-Override') ?? null,
    })
  },
  onAfterResponse(req, res) {
    // The last request with this method and URL that has no answer yet:
    // parallel partial uploads interleave theirs.
    const entry = [...requests]
      .reverse()
      .find((r) => r.status === undefined && r.method === req.getMethod() && r.url === req.getURL())
    if (entry) {
      entry.status = res.getStatus()
      entry.responseOffset = header(res, 'Upload-Offset')
      entry.location = header(res, 'Location')
    }
  },
  onProgress(bytesSent) {
    sent = bytesSent
  },
  onError(error) {
    fail(String(error && error.message ? error.message : error), { sent, requests })
  },
  onSuccess() {
    process.stdout.write(
      `${JSON.stringify({ url: upload.url, size, protocol: opts.protocol, resumed, previous, requests })}\n`,
    )
    process.exit(0)
  },
})

let resumed = false
let previous = 0

async function main() {
  if (opts.resume) {
    const found = await upload.findPreviousUploads()
    previous = found.length
    if (found.length === 0) {
      fail(`--resume: no upload of ${opts.file} is stored in ${opts.storage}`)
    }
    // The newest, as an application offering "resume" would pick it.
    found.sort((a, b) => new Date(b.creationTime) - new Date(a.creationTime))
    upload.resumeFromPreviousUpload(found[0])
    resumed = true
  }
  upload.start()
}

main().catch((e) => fail(String(e && e.message ? e.message : e), { requests }))
