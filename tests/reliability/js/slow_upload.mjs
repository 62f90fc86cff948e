// tus-js-client that sends in chunks and waits before each PATCH, so a fault injected by the test lands
// mid-upload. Same JSON-lines events as tests/js/upload.mjs (url, response, chunk, retry, success, error).
//
//   node slow_upload.mjs --endpoint URL --file PATH --chunk-size N [--delay-ms N] [--retry-delays 0,200,...]
//        [--metadata key=value]...
//
// tus-js-client comes from tests/js/node_modules (a colleague's install, used read-only).

import path from 'node:path'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'

const require = createRequire(new URL('../../js/package.json', import.meta.url))
const { Upload } = require('tus-js-client')

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, time: Date.now() / 1000, ...fields })}\n`)
}

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    'chunk-size': { type: 'string' },
    'delay-ms': { type: 'string', default: '0' },
    'retry-delays': { type: 'string', default: '200,500,1000' },
    metadata: { type: 'string', multiple: true },
  },
})
const delay = Number(args['delay-ms'])
const metadata = { filename: path.basename(args.file) }
for (const item of args.metadata ?? []) {
  const at = item.indexOf('=')
  metadata[item.slice(0, at)] = item.slice(at + 1)
}

let upload = null
upload = new Upload(fs.createReadStream(args.file), {
  endpoint: args.endpoint,
  chunkSize: Number(args['chunk-size']),
  retryDelays: args['retry-delays'].split(',').map(Number),
  metadata,
  async onBeforeRequest(req) {
    if (req.getMethod() === 'PATCH' && delay > 0) await new Promise((resolve) => setTimeout(resolve, delay))
  },
  onUploadUrlAvailable() { emit('url', { url: upload.url }) },
  onAfterResponse(req, res) {
    emit('response', { method: req.getMethod(), status: res.getStatus(), offset: res.getHeader('Upload-Offset') ?? null })
  },
  onChunkComplete(size, accepted, total) { emit('chunk', { accepted, total }) },
  onShouldRetry(err, attempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0
    const retry = status < 400 || status >= 500 || status === 409 || status === 423
    emit('retry', { attempt, status, retry, message: String(err.message).split('\n')[0] })
    return retry
  },
  onError(err) {
    emit('error', { status: err.originalResponse ? err.originalResponse.getStatus() : 0, message: String(err.message) })
    process.exit(1)
  },
  onSuccess() {
    emit('success', { url: upload.url })
    process.exit(0)
  },
})
upload.start()
