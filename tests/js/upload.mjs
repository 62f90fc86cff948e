// Uploads one file with tus-js-client, as Uppy and node scripts do, and reports what happened as JSON lines.
//
//   node upload.mjs --endpoint URL --file PATH [--chunk-size N] [--parallel N] [--retry-delays 0,500,1000|none]
//        [--header Name:value]... [--metadata key=value]... [--url-storage FILE] [--upload-url URL]
//        [--stop-after BYTES] [--delay-ms N] [--protocol ietf-draft-05]
//
// The file is given as fs.createReadStream(path): tus-js-client then streams it (one PATCH unless
// --chunk-size). --delay-ms waits before each PATCH, so a fault a test injects lands mid-upload. Every line on stdout is one JSON object with an "event":
//   url       the upload URL is known               {url}
//   response  a response arrived                    {method, status, offset, url}
//   progress  bytes handed to the socket            {sent, total}
//   chunk     a PATCH was accepted                  {accepted, total}
//   retry     the client will retry after an error  {attempt, status, message}
//   stopped   --stop-after reached, upload aborted  {sent, url}
//   success   the upload is complete                {url}
//   error     the client gave up                    {status, message}
// Exit status: 0 success, 1 error, 3 stopped on purpose, 2 bad arguments.

import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'

import { FileUrlStorage, Upload } from 'tus-js-client'

const PROGRESS_STEP = 1024 * 1024

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, time: Date.now() / 1000, ...fields })}\n`)
}

function pairs(items, separator) {
  const result = {}
  for (const item of items ?? []) {
    const at = item.indexOf(separator)
    if (at <= 0) {
      emit('error', { status: 0, message: `expected name${separator}value, got ${item}` })
      process.exit(2)
    }
    result[item.slice(0, at).trim()] = item.slice(at + 1).trim()
  }
  return result
}

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    'chunk-size': { type: 'string' },
    parallel: { type: 'string' },
    'retry-delays': { type: 'string', default: 'none' },
    header: { type: 'string', multiple: true },
    metadata: { type: 'string', multiple: true },
    'url-storage': { type: 'string' },
    'upload-url': { type: 'string' },
    'stop-after': { type: 'string' },
    protocol: { type: 'string' },
    'delay-ms': { type: 'string', default: '0' },
  },
})

if (!args.file || !(args.endpoint || args['upload-url'])) {
  emit('error', { status: 0, message: 'usage: upload.mjs --endpoint URL --file PATH [options]' })
  process.exit(2)
}

const retryDelays = args['retry-delays'] === 'none' ? null : args['retry-delays'].split(',').map(Number)
const stopAfter = args['stop-after'] ? Number(args['stop-after']) : null
const delay = Number(args['delay-ms'])
let lastProgress = -PROGRESS_STEP
let upload = null
let stopping = false

const options = {
  endpoint: args.endpoint,
  uploadUrl: args['upload-url'] ?? null,
  retryDelays,
  headers: pairs(args.header, ':'),
  metadata: { filename: path.basename(args.file), ...pairs(args.metadata, '=') },
  async onBeforeRequest(req) {
    if (req.getMethod() === 'PATCH' && delay > 0) await new Promise((resolve) => setTimeout(resolve, delay))
  },
  onUploadUrlAvailable() {
    emit('url', { url: upload.url })
  },
  onAfterResponse(req, res) {
    emit('response', {
      method: req.getMethod(),
      status: res.getStatus(),
      offset: res.getHeader('Upload-Offset') ?? null,
      url: req.getURL(),
    })
  },
  onProgress(sent, total) {
    if (sent - lastProgress >= PROGRESS_STEP || sent === total) {
      lastProgress = sent
      emit('progress', { sent, total })
    }
    if (stopAfter != null && sent >= stopAfter && !stopping) {
      stopping = true
      upload.abort(false).then(() => {
        emit('stopped', { sent, url: upload.url })
        process.exit(3)
      })
    }
  },
  onChunkComplete(size, accepted, total) {
    emit('chunk', { accepted, total })
  },
  onShouldRetry(err, attempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0
    // tus-js-client's own rule: retry network errors, 5xx, 409 and 423, never other 4xx
    const retry = status < 400 || status >= 500 || status === 409 || status === 423
    if (retry) emit('retry', { attempt, status, message: String(err.message).split('\n')[0] })
    return retry
  },
  onError(err) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0
    emit('error', { status, message: String(err.message) })
    process.exit(1)
  },
  onSuccess() {
    emit('success', { url: upload.url })
    process.exit(0)
  },
}
if (args['chunk-size']) options.chunkSize = Number(args['chunk-size'])
if (args.parallel) options.parallelUploads = Number(args.parallel)
if (args.protocol) options.protocol = args.protocol // tus-v1 (default), ietf-draft-03 or ietf-draft-05
if (args['url-storage']) {
  options.urlStorage = new FileUrlStorage(args['url-storage'])
  options.removeFingerprintOnSuccess = false
}

upload = new Upload(fs.createReadStream(args.file), options)

if (args['url-storage'] && !args['upload-url']) {
  const previous = await upload.findPreviousUploads()
  if (previous.length > 0) {
    emit('resuming', { url: previous[0].uploadUrl })
    upload.resumeFromPreviousUpload(previous[0])
  }
}
upload.start()
